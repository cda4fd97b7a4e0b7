"""Imports every module that registers components with gin, so gin files can name them.

Add a module here when it registers a new component; the config test parses every shipped .gin file
against this registry. The ``Experiment`` itself is registered by ``bench.runner``, which imports this
module: import the runner to parse a config (the command line does). None of these imports loads
segment_anything, transformers or scikit-image: those are imported when a component that needs them is
first used.
"""
import bench.tables  # noqa: F401  TableSpec
import bench.tasks  # noqa: F401  SemanticSegmentationTask, DetectionTask
import datasets.s3dis  # noqa: F401  S3DISBin, S3DISRaw
import datasets.scannet  # noqa: F401  ScanNetExport, ScanNetBin, ScanNetRaw, SensFrames, PosedImageFrames
import datasets.sunrgbd  # noqa: F401  SunRgbdVotenet, SunRgbdMmdet3d
import datasets.synthetic  # noqa: F401  SyntheticIndoor
import methods.detr_recipe  # noqa: F401  DetrRecipe
import methods.encoder  # noqa: F401  EncoderSpec, DecoderSpec
import methods.finetune  # noqa: F401  SegmentationFinetune, DetrDetection, FinetuneRow
import methods.groupfree_finetune  # noqa: F401  GroupFreeDetection, GroupFreeRecipe
import methods.mask_sources  # noqa: F401  SamMaskSource, PrecomputedMaskSource, ClassicalMaskSource, RenderedMaskSource
import methods.nonlearned  # noqa: F401  NonLearnedBaseline
import methods.objectives  # noqa: F401  RegionDistillation, MaskedTokenPrediction, DistillationWithMTP, PointMAE, Bridge3DStyle
import methods.preparation  # noqa: F401  FramePreparation
import methods.pretrain  # noqa: F401  PretrainStage, PretrainRow
import methods.protocols  # noqa: F401  FullFinetune, LinearProbe, LimitedReconstructions, LimitedAnnotations
import methods.reweighting  # noqa: F401  GroupBalancing
import methods.teachers  # noqa: F401  Dinov2Teacher, SimulatedTeacher
import methods.tokenizers  # noqa: F401  KnnTokenizer, SamGuidedTokenizer, ExactFPS, ...
import methods.train  # noqa: F401  TrainSchedule
import methods.vote_finetune  # noqa: F401  VoteGroupDetection
