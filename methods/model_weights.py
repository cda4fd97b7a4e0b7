"""Local model weights: load a state-dict file without unpickling code, and pick the device to run on.

``torch.load`` without ``weights_only=True`` unpickles anything a file holds, so loading a checkpoint
from the wrong source can run code (segment-anything's ``build_sam*`` does exactly that, and torch
< 2.6 defaults to it). Before 2.6 even ``weights_only=True`` could be bypassed (CVE-2025-32434), so
there pickle-based files are refused and ``.safetensors`` files (no code at all) are the way in.
``load_weights`` reads tensors only and checks every key and shape, with one-line errors naming the file.
``resolve_device`` turns ``'auto'`` into the accelerator when there is one (preparation runs SAM and
DINOv2 over every frame: hours per thousand frames on a CPU).
"""
from __future__ import annotations

import pathlib
import pickle
import re
from collections.abc import Mapping

import torch
from torch import nn

from infra.errors import HarnessError


def resolve_device(device: str, where: str) -> str:
    """``'auto'`` -> ``'cuda'`` when ``torch.cuda.is_available()``, else ``'cpu'``; other names checked.

    ``where`` names the parameter in errors (e.g. ``SamMaskSource.device``). An explicit CUDA device on a
    machine without one is an error here rather than deep inside the first forward pass.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise HarnessError(f"{where} = {device!r} is not a torch device; expected 'auto', 'cpu', 'cuda' "
                           "or 'cuda:N'") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"{where} = {device!r} but torch.cuda.is_available() is False here; "
                           "use 'auto' or 'cpu'")
    return device


SAFE_TORCH_LOAD = (2, 6)  # first torch whose weights_only unpickler has no known bypass (CVE-2025-32434)


def _torch_version() -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()
    return int(major), int(minor)


def _read_state(path: pathlib.Path, expected: str):
    """What the file holds, read without running code; HarnessError if it cannot be read that way."""
    safetensors = path.suffix == ".safetensors"
    if not safetensors and _torch_version() < SAFE_TORCH_LOAD:
        raise HarnessError(f"checkpoint {path}: torch {torch.__version__} cannot load pickle-based files safely "
                           "(weights_only=True can be bypassed before 2.6, CVE-2025-32434); upgrade to torch>=2.6 "
                           "or convert the file to .safetensors where torch>=2.6 is installed")
    try:
        if safetensors:
            from safetensors.torch import load_file  # installed with transformers

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (bad zip), EOFError (empty), SafetensorError...
        raise HarnessError(f"checkpoint {path}: {_load_problem(e)}; {expected}") from None


def _load_problem(error: Exception) -> str:
    """The useful part of a failed ``torch.load``: the unpickler's refusal, else the first sentence."""
    text = str(error).strip()
    if isinstance(error, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        lines = [line.strip() for line in text.split("WeightsUnpickler error:", 1)[1].splitlines() if line.strip()]
        reason = lines[0].split(" was not an allowed global")[0] if lines else "unsupported content"
        return f"torch.load(weights_only=True) refused it ({reason})"
    first = text.splitlines()[0].split(". ")[0] if text else "empty or truncated file"
    return f"unreadable ({type(error).__name__}: {first})"


def _short(keys: list[str], limit: int = 3) -> str:
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{', '.join(keys[:limit])}{more}]"


def load_weights(model: nn.Module, path: str | pathlib.Path, what: str) -> nn.Module:
    """Load the state dict in ``path`` into ``model`` (strictly) and return ``model``.

    A ``.safetensors`` file is read with safetensors; anything else with ``torch.load(path,
    map_location='cpu', weights_only=True)`` (torch >= 2.6 only, see the module docstring), so a file
    that needs anything beyond tensors and plain containers is refused, never unpickled. Every key of the
    model must be present with the same shape and the file may hold no other key; otherwise a one-line
    HarnessError names the file, ``what`` the model is (e.g. ``SAM vit_h``) and the keys at fault.
    """
    path = pathlib.Path(path)
    expected = f"expected a state dict of {what} (parameter name -> tensor) saved with torch.save or safetensors"
    if not path.is_file():
        raise HarnessError(f"checkpoint not found: {path} ({expected})")
    state = _read_state(path, expected)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = type(state).__name__
        if isinstance(state, Mapping):
            found += f" with keys {_short(sorted(map(str, state)))}"
        raise HarnessError(f"checkpoint {path}: holds a {found}; {expected}")
    own = model.state_dict()
    problems = []
    if missing := sorted(k for k in own if k not in state):
        problems.append(f"missing {len(missing)} keys {_short(missing)}")
    if unexpected := sorted(k for k in state if k not in own):
        problems.append(f"{len(unexpected)} unexpected keys {_short(unexpected)}")
    if mismatched := sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                            for k in own if k in state and state[k].shape != own[k].shape):
        problems.append(f"shape mismatch (file vs model) in {len(mismatched)} keys {_short(mismatched)}")
    if problems:
        raise HarnessError(f"checkpoint {path} does not fit {what}: {'; '.join(problems)} "
                           "(is it the checkpoint of this model type?)")
    model.load_state_dict(state, strict=True)
    return model
