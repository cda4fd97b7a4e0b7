"""Test helper: a temporary stand-in for torchvision so segment_anything can be imported and run.

segment_anything imports torchvision for exactly four functions (checked against its source):
``torchvision.ops.boxes.batched_nms`` and ``box_area`` (automatic_mask_generator.py) and
``torchvision.transforms.functional.resize`` and ``to_pil_image`` (utils/transforms.py, as
``np.array(resize(to_pil_image(uint8 HWC array), [h, w]))``). The fakes implement those faithfully
(greedy NMS in descending score order per category; PIL bilinear resize, which is what torchvision
does on a PIL image).

Use only inside ``with torchvision_shim():`` and only where torchvision is missing. On exit the fake
modules and every segment_anything module imported under the shim are removed from ``sys.modules``:
transformers probes ``importlib.util.find_spec("torchvision")``, and a lingering fake would make it
believe torchvision is installed. The fakes carry ``__spec__ = None``, so such a probe made *inside*
the shim raises instead of caching a wrong answer.
"""
from __future__ import annotations

import contextlib
import sys
import types
from typing import Iterator

import numpy as np
import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of (N, 4) xyxy boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _box_iou(boxes: torch.Tensor) -> torch.Tensor:
    area = box_area(boxes)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    return inter / (area[:, None] + area[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes in decreasing score order (torchvision.ops.nms)."""
    order = torch.argsort(scores, descending=True, stable=True)
    iou = _box_iou(boxes.float())
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS run separately per category ``idxs`` (torchvision's coordinate-offset trick)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def to_pil_image(image: np.ndarray):
    """(H, W, 3) uint8 array -> PIL RGB image (the only form segment_anything passes)."""
    from PIL import Image

    return Image.fromarray(np.asarray(image))


def resize(image, size):
    """Resize a PIL image to ``size`` = [h, w], bilinear (torchvision's default on PIL input)."""
    from PIL import Image

    return image.resize((int(size[1]), int(size[0])), Image.BILINEAR)


def _fake_modules() -> dict[str, types.ModuleType]:
    modules = {name: types.ModuleType(name) for name in (
        "torchvision", "torchvision.ops", "torchvision.ops.boxes",
        "torchvision.transforms", "torchvision.transforms.functional")}
    for name in ("torchvision.ops", "torchvision.ops.boxes"):
        modules[name].batched_nms, modules[name].box_area, modules[name].nms = batched_nms, box_area, nms
    modules["torchvision.transforms.functional"].resize = resize
    modules["torchvision.transforms.functional"].to_pil_image = to_pil_image
    for name, module in modules.items():
        module.__path__ = []  # a package, so submodule imports resolve through sys.modules
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    return modules


def torchvision_available() -> bool:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def torchvision_shim() -> Iterator[bool]:
    """Install the fake torchvision for the block if the real one is missing; yields whether it did."""
    if torchvision_available():
        yield False
        return
    fakes = _fake_modules()
    before = set(sys.modules)
    sys.modules.update(fakes)
    try:
        yield True
    finally:
        for name in list(sys.modules):
            top = name.split(".")[0]
            if name in fakes or (top in ("torchvision", "segment_anything") and name not in before):
                del sys.modules[name]
