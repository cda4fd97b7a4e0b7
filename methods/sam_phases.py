"""Where a SAM frame's time goes, and its image encoder in bf16: hooks on the model's own modules.

``SamAutomaticMaskGenerator.generate`` runs, per crop, the image encoder once and then, per batch of point
prompts, the prompt encoder and mask decoder, and between and after them its post-processing on the CPU
(thresholds, stability scores, RLE encoding, NMS, small-region removal). ``SamPhases`` times the encoder and
the decoding by forward hooks on those modules (synchronising CUDA around them, so the seconds are the
device's); the post-processing is the rest of ``generate``'s time.
"""
from __future__ import annotations

import time

import torch

ENCODER, DECODER, POST = "masks_encoder", "masks_decoder", "masks_post"


class SamPhases:
    """Seconds in SAM's image encoder and in its prompt decoding since the last ``take``."""

    def __init__(self, sam: torch.nn.Module, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self.seconds = {ENCODER: 0.0, DECODER: 0.0}
        self._started: dict[str, float] = {}
        for phase, module in ((ENCODER, sam.image_encoder), (DECODER, sam.prompt_encoder),
                              (DECODER, sam.mask_decoder)):
            module.register_forward_pre_hook(self._start_hook(phase))
            module.register_forward_hook(self._stop_hook(phase))

    def take(self, total: float) -> dict[str, float]:
        """The encoder's and the decoding's seconds, and the rest of ``total`` (a frame's masks) as
        post-processing; the counts start again from zero."""
        out = {**self.seconds, POST: max(0.0, total - sum(self.seconds.values()))}
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        return out

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _start_hook(self, phase: str):
        def hook(module, args):
            self._started[phase] = self._now()
        return hook

    def _stop_hook(self, phase: str):
        def hook(module, args, output):
            self.seconds[phase] += self._now() - self._started.pop(phase)
        return hook


def encode_in_bf16(encoder: torch.nn.Module, device: torch.device | str) -> None:
    """Run ``encoder`` (SAM's image encoder) under bf16 autocast on its device, its output back in float32
    for the prompt decoding (which stays float32)."""
    forward, device_type = encoder.forward, torch.device(device).type

    def bf16_forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return forward(*args, **kwargs).float()

    encoder.forward = bf16_forward
