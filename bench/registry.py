"""Imports every module that registers components with gin, so gin files can name them.

Add a module here when it registers a new component; the config test parses every shipped .gin file
against this registry.
"""
import bench.runner  # noqa: F401  Experiment
import bench.tasks  # noqa: F401  SemanticSegmentationTask, DetectionTask
import datasets.synthetic  # noqa: F401  SyntheticIndoor
import methods.nonlearned  # noqa: F401  NonLearnedBaseline
