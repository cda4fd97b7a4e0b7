"""The embedded simulated indoor RGB-D benchmark (procedural rooms rendered by ray casting).

``SyntheticIndoor`` is the entry point; it is registered with gin under that name.
"""
from datasets.synthetic.dataset import SyntheticIndoor
from datasets.synthetic.layout import DET_CLASSES, SEG_CLASSES

__all__ = ["DET_CLASSES", "SEG_CLASSES", "SyntheticIndoor"]
