"""Mask sources (methods/mask_sources.py): SAM through the real generator code, precomputed files,
the classical segmenter on a real image and the simulated (rendered) source."""
from __future__ import annotations

import importlib.util
import sys

import gin
import numpy as np
import pytest
import torch

from datasets.types import Frame
from infra.errors import HarnessError
from methods.mask_sources import (
    ClassicalMaskSource,
    PrecomputedMaskSource,
    RenderedMaskSource,
    SamMaskSource,
    check_label_map,
    paint_masks,
    save_mask_map,
)
from tests.methods.sam_shim import torchvision_available, torchvision_shim
from tests.methods.test_model_weights import WritesAMarker

HW = (64, 96)


def make_frame(frame_id: str = "scene0/000000", hw=HW, instance=True, seed=0) -> Frame:
    """A small frame: a 3x4 grid of touching instances (ids 1..12) with a 4-pixel empty border."""
    rng = np.random.default_rng(seed)
    H, W = hw
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    inst = (1 + (rows * 3 // H) * 4 + cols * 4 // W).astype(np.int32)
    inst[:4], inst[:, :4] = 0, 0
    rgb = (rng.integers(0, 40, size=(H, W, 3)) + (inst[..., None] * [17, 53, 91]) % 200).astype(np.uint8)
    return Frame(frame_id=frame_id, rgb=rgb, depth=np.ones(hw, np.float32), intrinsics=np.eye(3),
                 pose=np.eye(4), instance=inst if instance else None,
                 semantic=np.where(inst > 0, (inst - 1) % 5, -1).astype(np.int32) if instance else None)


def num_regions(label_map: np.ndarray) -> int:
    return len(np.unique(label_map[label_map > 0]))


# ------------------------------------------------------------------------------------ shared rules


def test_check_label_map_rejects_wrong_size_dtype_and_negatives():
    with pytest.raises(ValueError, match=r"shape \(64, 95\).*\(64, 96\)"):
        check_label_map(np.zeros((64, 95), np.int32), HW, "src")
    with pytest.raises(ValueError, match="dtype float32"):
        check_label_map(np.zeros(HW, np.float32), HW, "src")
    with pytest.raises(ValueError, match="span"):
        check_label_map(np.full(HW, -1), HW, "src")
    assert check_label_map(np.zeros(HW, np.uint16), HW, "src").dtype == np.int32


def test_wrong_size_from_a_source_is_an_error():
    frame = make_frame()
    frame.instance = frame.instance[:, :-1]
    with pytest.raises(ValueError, match="expected the frame's"):
        RenderedMaskSource()(frame)


def test_paint_masks_smaller_wins_and_hidden_masks_take_no_label():
    hw = (4, 6)
    whole = np.ones(hw, bool)
    left = np.zeros(hw, bool)
    left[:, :3] = True
    top_left, bottom_left = left.copy(), left.copy()
    top_left[2:], bottom_left[:2] = False, False  # together they hide `left` completely
    spot = np.zeros(hw, bool)
    spot[0, 5] = True
    label_map = paint_masks([left, spot, whole, top_left, bottom_left], hw)
    assert label_map.dtype == np.int32
    assert num_regions(label_map) == 4  # whole, top_left, bottom_left, spot
    assert label_map[0, 5] != label_map[1, 5]  # the one-pixel mask sits on top of `whole`
    assert label_map[0, 0] != label_map[3, 0] and label_map[0, 0] != label_map[0, 4]
    assert label_map[0, 4] == 1  # largest first
    assert paint_masks([], hw).max() == 0


def test_paint_masks_keeps_more_than_255_labels():
    hw = (20, 20)
    masks = [np.arange(400).reshape(hw) == k for k in range(300)]
    assert paint_masks(masks, hw).max() == 300


# --------------------------------------------------------------------------------------------- SAM


def build_tiny_sam(checkpoint: str | None = None):
    """A randomly initialised SAM with tiny dims (64 px input); same signature as the registry."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                                      out_chans=16, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                      use_rel_pos=True, window_size=2, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=16, num_multimask_outputs=3, iou_head_depth=2, iou_head_hidden_dim=16,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=16, mlp_dim=32, num_heads=2)),
    )
    if checkpoint is not None:  # SamMaskSource passes None and loads the weights itself
        sam.load_state_dict(torch.load(checkpoint, weights_only=True))
    return sam.eval()


@pytest.fixture
def tiny_sam_checkpoint(tmp_path):
    with torchvision_shim():
        path = tmp_path / "sam_tiny.pth"
        torch.save(build_tiny_sam().state_dict(), path)
    return path


def test_sam_source_runs_the_real_generator(tiny_sam_checkpoint):
    source = SamMaskSource(str(tiny_sam_checkpoint), model_type="tiny", model_builder=build_tiny_sam, device="cpu",
                           points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                           crop_n_layers=1, box_nms_thresh=1.0, crop_nms_thresh=1.0, min_mask_region_area=0)
    assert source.description == "SAM tiny (checkpoint sam_tiny.pth, on cpu)"
    frame = make_frame()
    with torchvision_shim():
        label_map = source(frame)
        records = source._generator.generate(frame.rgb)  # a second, independent run
    assert label_map.shape == HW and label_map.dtype == np.int32
    # no NMS (thresholds 1.0) keeps many overlapping masks from random weights
    assert len(records) > 1 and num_regions(label_map) > 1
    np.testing.assert_array_equal(label_map, paint_masks([r["segmentation"] for r in records], HW))
    smallest = min(records, key=lambda r: r["area"])["segmentation"]
    assert len(np.unique(label_map[smallest])) == 1  # the smallest mask is never overwritten


@pytest.mark.parametrize("cuda, expected", [(True, "cuda"), (False, "cpu")])
def test_sam_device_defaults_to_the_accelerator(tiny_sam_checkpoint, monkeypatch, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    source = SamMaskSource(str(tiny_sam_checkpoint))
    assert source.device == expected and source.description.endswith(f"on {expected})")
    assert SamMaskSource(str(tiny_sam_checkpoint), device="cpu").device == "cpu"


def test_sam_cuda_without_a_gpu_is_a_one_line_error(tiny_sam_checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HarnessError, match="SamMaskSource.device = 'cuda' but"):
        SamMaskSource(str(tiny_sam_checkpoint), device="cuda")


def test_sam_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(HarnessError, match="SamMaskSource.checkpoint: .*sam_vit_h.pth"):
        SamMaskSource(str(tmp_path / "sam_vit_h.pth"))


def test_sam_registry_model_is_built_without_checkpoint_and_loaded_safely(tmp_path, monkeypatch):
    """The registry builder gets checkpoint=None; the harness loads the file with weights_only=True."""
    calls = []

    def registry_builder(checkpoint=None):
        calls.append(checkpoint)
        return build_tiny_sam(checkpoint)

    with torchvision_shim():
        import segment_anything

        trained = build_tiny_sam()
        with torch.no_grad():
            for param in trained.parameters():
                param.add_(0.5)  # differs from the builder's initialisation, so loading is visible
        torch.save(trained.state_dict(), tmp_path / "sam_vit_b.pth")
        monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", registry_builder)
        source = SamMaskSource(str(tmp_path / "sam_vit_b.pth"), model_type="vit_b", points_per_side=2,
                               crop_n_layers=0, min_mask_region_area=0, device="cpu")
        source(make_frame())
    assert calls == [None]
    loaded = source._generator.predictor.model.state_dict()
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(loaded[key], value)


def test_sam_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran.marker"
    torch.save({"image_encoder.neck.0.weight": WritesAMarker(marker)}, tmp_path / "sam_evil.pth")
    source = SamMaskSource(str(tmp_path / "sam_evil.pth"), model_type="tiny", model_builder=build_tiny_sam,
                           min_mask_region_area=0)
    with torchvision_shim(), pytest.raises(HarnessError, match=r"sam_evil.pth: torch.load\(weights_only=True\) "
                                                               "refused it .*state dict of SAM tiny") as err:
        source(make_frame())
    assert "\n" not in str(err.value) and not marker.exists()


def test_sam_checkpoint_of_another_model_names_the_keys(tmp_path):
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 4, 4, 32)}, tmp_path / "sam_other.pth")
    source = SamMaskSource(str(tmp_path / "sam_other.pth"), model_type="tiny", model_builder=build_tiny_sam,
                           min_mask_region_area=0)
    with torchvision_shim(), pytest.raises(HarnessError, match="sam_other.pth does not fit SAM tiny: missing"):
        source(make_frame())


def test_sam_without_torchvision_says_what_to_install(tiny_sam_checkpoint, monkeypatch):
    # None in sys.modules makes `import torchvision` fail even where it is installed.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    for name in [n for n in sys.modules if n.split(".")[0] == "segment_anything"]:
        monkeypatch.delitem(sys.modules, name)
    source = SamMaskSource(str(tiny_sam_checkpoint), min_mask_region_area=0)
    try:
        with pytest.raises(ImportError, match="pip install torchvision") as err:
            source(make_frame())
        assert "\n" not in str(err.value)
    finally:  # the failed import leaves segment_anything.modeling behind; keep later tests clean
        for name in [n for n in sys.modules if n.split(".")[0] == "segment_anything"]:
            del sys.modules[name]


def test_sam_unknown_model_type_lists_valid_ones(tiny_sam_checkpoint):
    source = SamMaskSource(str(tiny_sam_checkpoint), model_type="vit_xl", min_mask_region_area=0)
    with torchvision_shim(), pytest.raises(HarnessError, match="vit_xl.*vit_b, vit_h, vit_l"):
        source(make_frame())


@pytest.mark.skipif(importlib.util.find_spec("cv2") is not None, reason="OpenCV is installed here")
def test_sam_min_region_area_without_opencv_is_a_clear_error(tiny_sam_checkpoint):
    source = SamMaskSource(str(tiny_sam_checkpoint), model_builder=build_tiny_sam)
    with torchvision_shim(), pytest.raises(ImportError, match="opencv"):
        source(make_frame())


@pytest.mark.skipif(torchvision_available(), reason="the real torchvision is installed; no shim is used")
def test_shim_leaves_nothing_behind():
    with torchvision_shim() as installed:
        import segment_anything  # noqa: F401
        from torchvision.ops.boxes import batched_nms

        assert installed and "torchvision" in sys.modules
    assert not [n for n in sys.modules if n.split(".")[0] in ("torchvision", "segment_anything")]
    assert importlib.util.find_spec("torchvision") is None
    import transformers

    config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, image_size=28, patch_size=14)
    out = transformers.Dinov2Model(config)(pixel_values=torch.zeros(1, 3, 28, 28)).last_hidden_state
    assert out.shape == (1, 5, 16)
    # the fake NMS: two overlapping boxes of one class keep the higher score; other class untouched
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float)
    keep = batched_nms(boxes, torch.tensor([0.5, 0.9, 0.8, 0.1]), torch.tensor([0, 0, 1, 0]), iou_threshold=0.7)
    assert keep.tolist() == [1, 2, 3]


# ------------------------------------------------------------------------------------- precomputed


@pytest.mark.parametrize("pattern", ["{frame_id}.npy", "masks/{frame_id}.png"])
def test_precomputed_round_trip(tmp_path, pattern):
    frame = make_frame("scene7/000025")
    label_map = frame.instance * 300  # beyond uint8
    save_mask_map(tmp_path / pattern.format(frame_id=frame.frame_id), label_map)
    source = PrecomputedMaskSource(str(tmp_path), pattern)
    out = source(frame)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, label_map)
    assert str(tmp_path) in source.description


def test_precomputed_errors_name_the_file(tmp_path):
    frame = make_frame("f1")
    source = PrecomputedMaskSource(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="f1.npy"):
        source(frame)
    np.save(tmp_path / "f1.npy", np.zeros((64, 95), np.int32))
    with pytest.raises(ValueError, match=r"f1.npy.*shape \(64, 95\), expected"):
        source(frame)
    np.save(tmp_path / "f1.npy", np.zeros(HW, np.float32))
    with pytest.raises(ValueError, match="f1.npy.*dtype float32, expected an integer"):
        source(frame)
    with pytest.raises(ValueError, match=".npy or .png"):
        PrecomputedMaskSource(str(tmp_path), "{frame_id}.jpg")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        PrecomputedMaskSource(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="16-bit"):
        save_mask_map(tmp_path / "big.png", np.full(HW, 70_000))


# --------------------------------------------------------------------------------------- classical


def test_classical_on_a_real_sunrgbd_image(real_data):
    from PIL import Image

    path = real_data / "sunrgbd/mmdet3d_9e39d46/sunrgbd_trainval/image/000001.jpg"
    if not path.is_file():
        pytest.skip(f"SUN RGB-D excerpt image missing: {path}")
    rgb = np.array(Image.open(path).convert("RGB"))
    frame = Frame("sunrgbd/000001", rgb, np.zeros(rgb.shape[:2], np.float32), np.eye(3), np.eye(4))
    source = ClassicalMaskSource()
    label_map = source(frame)
    assert label_map.dtype == np.int32 and label_map.shape == rgb.shape[:2]
    assert num_regions(label_map) > 10
    assert label_map.min() >= 1  # a partition: 0 is unused
    assert "not SAM" in source.description


# ---------------------------------------------------------------------------------------- rendered


def test_rendered_without_noise_is_the_instance_map():
    frame = make_frame()
    source = RenderedMaskSource()
    np.testing.assert_array_equal(source(frame), frame.instance)
    assert source.description.startswith("simulated SAM")


def test_rendered_split_and_merge_move_the_count_the_expected_way():
    frame = make_frame()
    n = num_regions(frame.instance)
    split = RenderedMaskSource(split_prob=1.0)(frame)
    merged = RenderedMaskSource(merge_prob=1.0)(frame)
    assert num_regions(split) == 2 * n
    assert 1 <= num_regions(merged) < n
    assert ((split > 0) == (frame.instance > 0)).all() and ((merged > 0) == (frame.instance > 0)).all()
    half = RenderedMaskSource(split_prob=0.5, merge_prob=0.3, seed=3)
    assert "simulated SAM" in half.description and "split 0.5" in half.description


def test_rendered_is_deterministic_per_seed_and_frame():
    source = RenderedMaskSource(split_prob=0.5, merge_prob=0.5, seed=1)
    a, b = source(make_frame("s/1")), RenderedMaskSource(split_prob=0.5, merge_prob=0.5, seed=1)(make_frame("s/1"))
    np.testing.assert_array_equal(a, b)
    others = [source(make_frame(f"s/{i}")) for i in range(2, 6)]
    assert any(not np.array_equal(a, o) for o in others)


def test_rendered_drop_small_and_missing_instances():
    frame = make_frame()
    frame.instance[10:12, 10:12] = 99
    out = RenderedMaskSource(drop_small=5)(frame)
    assert (out[10:12, 10:12] == 0).all() and 99 not in out
    with pytest.raises(ValueError, match="no instance map"):
        RenderedMaskSource()(make_frame(instance=False))


def test_sources_are_wired_through_gin():
    holder = gin.external_configurable(lambda source=None: source, "test_masks_holder")
    gin.parse_config("test_masks_holder.source = @RenderedMaskSource()\nRenderedMaskSource.split_prob = 0.25")
    assert holder().split_prob == 0.25


def test_sam_says_what_a_frame_needs_on_its_device(tiny_sam_checkpoint):
    def source(points_per_batch):
        return SamMaskSource(str(tiny_sam_checkpoint), model_type="tiny", model_builder=build_tiny_sam, device="cpu",
                             points_per_batch=points_per_batch)

    small, large = source(64).frame_memory((480, 640)), source(4096).frame_memory((480, 640))
    assert large[0] > small[0] > 64 * 3 * 480 * 640 * 4 and large[1] == "SamMaskSource.points_per_batch = 4096"


def _tiny_sam(checkpoint, **overrides) -> SamMaskSource:
    kwargs = dict(model_type="tiny", model_builder=build_tiny_sam, device="cpu", points_per_side=4,
                  pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0, crop_nms_thresh=1.0,
                  min_mask_region_area=0)
    return SamMaskSource(str(checkpoint), **{**kwargs, **overrides})


def test_sam_says_where_a_frames_time_goes_and_the_preparation_records_it(tiny_sam_checkpoint):
    from methods.preparation import FramePreparation
    from methods.teachers import SimulatedTeacher

    preparation = FramePreparation(_tiny_sam(tiny_sam_checkpoint), SimulatedTeacher(dim=8), points_per_frame=64)
    phases: dict[str, float] = {}
    with torchvision_shim():
        preparation.prepare_frame(make_frame(), phases)
    parts = {k: phases[k] for k in ("masks_encoder", "masks_decoder", "masks_post")}
    assert parts["masks_encoder"] > 0 and parts["masks_decoder"] > 0 and parts["masks_post"] >= 0
    # the parts are the masks' own seconds: together at most the masks' time, most of it
    assert 0.5 * phases["masks"] <= sum(parts.values()) <= phases["masks"] + 1e-6, phases


def test_sam_image_encoder_in_bf16_is_an_option_and_part_of_the_key(tiny_sam_checkpoint):
    plain, bf16 = _tiny_sam(tiny_sam_checkpoint), _tiny_sam(tiny_sam_checkpoint, encoder_bf16=True)
    assert bf16.description.endswith("on cpu, image encoder in bf16)")
    assert bf16.cache_state() != plain.cache_state()
    dtypes = []
    with torchvision_shim():
        bf16(make_frame())  # builds the generator
        encoder = bf16._generator.predictor.model.image_encoder
        encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
        label_map = bf16(make_frame())
        embedding = encoder(torch.zeros(1, 3, 64, 64))
    assert dtypes == [torch.bfloat16] * 6  # the encoder's matmuls ran in bf16: 1 + 4 crops, then the call above
    assert embedding.dtype == torch.float32 and label_map.dtype == np.int32 and num_regions(label_map) > 1
    with pytest.raises(ValueError, match="SamMaskSource.encoder_bf16"):
        _tiny_sam(tiny_sam_checkpoint, encoder_bf16="yes")
