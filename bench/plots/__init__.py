"""Plots of the harness: each module draws one kind of figure from plain arrays and writes a PNG."""
