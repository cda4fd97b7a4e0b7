"""2D teachers (methods/teachers.py): DINOv2 from a tiny local model directory, and the simulated
teacher of the synthetic benchmark."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from infra.errors import HarnessError
from methods.regions import region_features
from methods.teachers import Dinov2Teacher, SimulatedTeacher
from tests.methods.test_mask_sources import make_frame

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14,
            image_size=56)


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov2_tiny")
    torch.manual_seed(0)
    transformers.Dinov2Model(transformers.Dinov2Config(**TINY)).save_pretrained(path)
    return path


def test_dinov2_full_frame_patch_grid(dinov2_dir):
    teacher = Dinov2Teacher(str(dinov2_dir), device="cpu")
    frame = make_frame(hw=(64, 96))
    assert teacher.dim == 32 and teacher.input_hw((64, 96)) == (70, 98)
    feats = teacher(frame)
    assert feats.shape == (32, 5, 7) and feats.dtype == torch.float32
    fresh = Dinov2Teacher(str(dinov2_dir), device="cpu")
    torch.testing.assert_close(feats, fresh(frame))  # deterministic, fresh load
    assert "DINOv2" in teacher.description


@pytest.mark.parametrize("cuda, expected", [(True, "cuda"), (False, "cpu")])
def test_dinov2_device_defaults_to_the_accelerator(dinov2_dir, monkeypatch, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    teacher = Dinov2Teacher(str(dinov2_dir))
    assert teacher.device == expected and teacher.description.endswith(f"full frame, on {expected})")
    with pytest.raises(HarnessError, match="Dinov2Teacher.device = 'cuda:x' is not a torch device"):
        Dinov2Teacher(str(dinov2_dir), device="cuda:x")


def test_dinov2_image_size_sets_the_short_side(dinov2_dir):
    teacher = Dinov2Teacher(str(dinov2_dir), image_size=28)
    assert teacher.input_hw((64, 96)) == (28, 42)
    assert teacher(make_frame(hw=(64, 96))).shape == (32, 2, 3)
    assert Dinov2Teacher(str(dinov2_dir), image_size=28).input_hw((96, 64)) == (42, 28)


def test_dinov2_matches_the_model_on_the_normalised_image(dinov2_dir):
    (dinov2_dir / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    try:
        teacher = Dinov2Teacher(str(dinov2_dir), device="cpu")  # compared with the model on CPU
        frame = make_frame(hw=(42, 70))  # already patch multiples: no resize
        image = (torch.from_numpy(frame.rgb).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
        model = transformers.Dinov2Model.from_pretrained(str(dinov2_dir)).eval()
        with torch.no_grad():
            tokens = model(pixel_values=image).last_hidden_state[0, 1:]
        torch.testing.assert_close(teacher(frame), tokens.T.reshape(32, 3, 5))
    finally:
        (dinov2_dir / "preprocessor_config.json").unlink()


def test_dinov2_with_registers_drops_them(tmp_path):
    config = transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **TINY)
    transformers.Dinov2WithRegistersModel(config).save_pretrained(tmp_path)
    teacher = Dinov2Teacher(str(tmp_path))
    assert teacher.num_prefix_tokens == 5
    assert teacher(make_frame(hw=(28, 56))).shape == (32, 2, 4)


def test_dinov2_directory_errors(tmp_path, dinov2_dir):
    with pytest.raises(FileNotFoundError, match="not found: .*absent"):
        Dinov2Teacher(str(tmp_path / "absent"))
    (tmp_path / "config.json").write_text((dinov2_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*model.safetensors or pytorch_model.bin"):
        Dinov2Teacher(str(tmp_path))


def test_simulated_teacher_shapes_and_determinism():
    teacher = SimulatedTeacher(dim=16, patch_size=8)
    frame = make_frame("a/1", hw=(64, 96))
    feats = teacher(frame)
    assert feats.shape == (16, 8, 12) and feats.dtype == torch.float32 and teacher.dim == 16
    torch.testing.assert_close(feats, SimulatedTeacher(dim=16, patch_size=8)(make_frame("a/1", hw=(64, 96))))
    assert not torch.equal(feats, teacher(make_frame("a/2", hw=(64, 96))))  # noise differs per frame
    assert teacher(make_frame(hw=(60, 90))).shape == (16, 8, 11)  # round(H / p) cells span the image
    assert "simulated" in teacher.description


def test_simulated_teacher_without_noise_encodes_class_and_instance():
    teacher = SimulatedTeacher(dim=8, patch_size=1, noise=0.0)
    frame = make_frame(hw=(16, 24))
    feats = teacher(frame)
    same = frame.instance == frame.instance[8, 8]
    torch.testing.assert_close(feats[:, torch.from_numpy(same)], feats[:, 8, 8][:, None].expand(-1, int(same.sum())))


def test_simulated_same_instance_more_similar_than_other_class():
    frame = make_frame(hw=(64, 96))
    feats = torch.nn.functional.normalize(SimulatedTeacher(dim=64, patch_size=4)(frame), dim=0)
    # patch (row, col) -> instance: 16x24 grid, blocks of ~5x6 patches; patch (6, 3) and (8, 4) lie in one
    # instance, (6, 9) in its right neighbour with another class.
    grid = frame.instance[2::4, 2::4]
    sem = frame.semantic[2::4, 2::4]
    assert grid[6, 3] == grid[8, 4] and sem[6, 3] != sem[6, 9]
    same = (feats[:, 6, 3] * feats[:, 8, 4]).sum()
    other = (feats[:, 6, 3] * feats[:, 6, 9]).sum()
    assert same > other + 0.3
    # region means: same class (other instance) in between, then other classes
    ids, region = region_features(feats, frame.instance)
    region = torch.nn.functional.normalize(region, dim=1)
    sims = region @ region.T
    region_class = torch.from_numpy((ids - 1) % 5)  # make_frame's semantic = (instance - 1) % 5
    same_class = (region_class[:, None] == region_class[None, :]) & ~torch.eye(len(ids), dtype=torch.bool)
    other_class = region_class[:, None] != region_class[None, :]
    assert sims[other_class].max() < sims[same_class].min() and sims[same_class].max() < 0.95


def test_simulated_teacher_needs_labels():
    with pytest.raises(ValueError, match="semantic and instance"):
        SimulatedTeacher()(make_frame(instance=False))


def test_dinov2_says_what_a_frame_needs_on_its_device(dinov2_dir):
    native, smaller = Dinov2Teacher(str(dinov2_dir)), Dinov2Teacher(str(dinov2_dir), image_size=56)
    weights = sum(p.stat().st_size for p in dinov2_dir.glob("*.safetensors"))
    assert native.frame_memory((480, 640))[0] > smaller.frame_memory((480, 640))[0] > weights
    assert "image_size = 56" in smaller.frame_memory((480, 640))[1]
