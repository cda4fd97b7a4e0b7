"""Point tokenizers (DESIGN 2.3): KNN [prior] and SAM-guided [paper], one output type ``TokenSet``.

Both are called as ``tok(xyz, region_ids)`` with ``xyz`` a float (N,3) tensor and ``region_ids`` an
int64 (N,) tensor (0 = no region) and return G tokens of K points, G and K fixed by the tokenizer.
gin: ``Stage1.tokenizer = @SamGuidedTokenizer()``, ``KnnTokenizer.sampler = @ExactFPS()``.
``tokenizer_inputs`` / ``collate_tokenizer_inputs`` / ``tokenize_batch`` give the same tokens batched on
the training device (``methods.tokenizers.batched``).
"""
from methods.tokenizers.batched import (
    collate_tokenizer_inputs,
    supports_batched,
    tokenize_batch,
    tokenizer_inputs,
)
from methods.tokenizers.knn import KnnTokenizer, knn_indices, majority
from methods.tokenizers.sam_guided import SamGuidedTokenizer, allocate_proportional, allocate_tokens
from methods.tokenizers.sampling import (
    ExactFPS,
    RandomSampler,
    SubsampledFPS,
    farthest_point_sampling,
    segment_fps,
    segment_fps_seeds,
)
from methods.tokenizers.token_set import TokenSet

__all__ = [
    "ExactFPS",
    "KnnTokenizer",
    "RandomSampler",
    "SamGuidedTokenizer",
    "SubsampledFPS",
    "TokenSet",
    "allocate_proportional",
    "allocate_tokens",
    "collate_tokenizer_inputs",
    "farthest_point_sampling",
    "knn_indices",
    "majority",
    "segment_fps",
    "segment_fps_seeds",
    "supports_batched",
    "tokenize_batch",
    "tokenizer_inputs",
]
