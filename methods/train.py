"""The training loop shared by every pretraining stage.

AdamW with a linear warm-up then cosine decay per step, gradient-norm clipping, a checkpoint after every
epoch (written atomically; loads with ``torch.load(weights_only=True)``), resumption from the last
checkpoint, per-epoch loss curves through a logging callback, a progress bar. CPU and CUDA; bf16 autocast
only on CUDA (it is much slower than float32 on CPUs).
"""
from __future__ import annotations

import dataclasses
import io
import math
import pathlib
from collections.abc import Callable

import gin
import torch
from tqdm import tqdm

from bench.io import atomic_write_bytes


@gin.register
@dataclasses.dataclass(frozen=True)
class TrainSchedule:
    """Optimisation hyperparameters of one stage [prior: Point-MAE/Bridge3D pretraining, AdamW, cosine]."""

    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 10
    grad_clip: float = 10.0  # max gradient L2 norm; 0 = no clipping
    num_workers: int = 0  # data-loader worker processes
    device: str = "auto"  # "auto" = cuda if available, else cpu
    bf16: bool = True  # bf16 autocast, used on CUDA only

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up from 1/warmup to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def load_checkpoint(path: pathlib.Path) -> dict | None:
    """The checkpoint at ``path``, or None if absent or unreadable (then training starts afresh)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or corrupt zip; torch raises RuntimeError or pickle errors
        print(f"warning: checkpoint {path} is unreadable ({type(e).__name__}); training from scratch")
        return None


def train(module: torch.nn.Module, dataset: torch.utils.data.Dataset, collate: Callable,
          schedule: TrainSchedule, checkpoint: pathlib.Path, seed: int,
          log: Callable[[dict[str, float], int], None] | None = None, name: str = "train",
          extra_state: dict | None = None) -> list[dict[str, float]]:
    """Train ``module`` (its ``forward(batch)`` returns a dict with a scalar ``loss``) and return the
    per-epoch mean of every returned value. Resumes from ``checkpoint`` if it exists; a finished
    checkpoint trains nothing. ``dataset`` may have an ``epoch`` attribute, set before each epoch.
    """
    device = schedule.resolve_device()
    module.to(device)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    steps_per_epoch = math.ceil(len(dataset) / schedule.batch_size)
    total, warmup = schedule.epochs * steps_per_epoch, schedule.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    history: list[dict[str, float]] = []
    state = load_checkpoint(checkpoint)
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
    autocast = device.type == "cuda" and schedule.bf16
    for epoch in range(len(history), schedule.epochs):
        torch.manual_seed(seed * 100_003 + epoch)  # resumable: an epoch's randomness depends on its number
        if hasattr(dataset, "epoch"):
            dataset.epoch = epoch
        loader = torch.utils.data.DataLoader(dataset, batch_size=schedule.batch_size, shuffle=True,
                                             collate_fn=collate, num_workers=schedule.num_workers,
                                             generator=torch.Generator().manual_seed(seed + epoch))
        module.train()
        sums: dict[str, float] = {}
        for batch in tqdm(loader, desc=f"{name} epoch {epoch + 1}/{schedule.epochs}", leave=False):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = module(batch)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            if schedule.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, schedule.grad_clip)
            optimizer.step()
            scheduler.step()
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        epoch_means = {k: v / max(1, len(loader)) for k, v in sums.items()}
        epoch_means["lr"] = scheduler.get_last_lr()[0]
        history.append(epoch_means)
        _save(checkpoint, module, optimizer, scheduler, history, extra_state)
        if log is not None:
            log({f"{name}/{k}": v for k, v in epoch_means.items()}, epoch)
    return history


def _save(path, module, optimizer, scheduler, history, extra_state) -> None:
    buffer = io.BytesIO()
    torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history, **(extra_state or {})}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
