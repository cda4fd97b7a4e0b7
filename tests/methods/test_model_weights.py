"""Local weights (methods/model_weights.py): state dicts load strictly and without unpickling code; devices."""
from __future__ import annotations

import io
import pickle

import pytest
import torch
from torch import nn

from infra.errors import HarnessError
from methods.model_weights import load_weights, resolve_device


def tiny_model(width: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, width), nn.BatchNorm1d(width))


class WritesAMarker:
    """Unpickling this calls ``open(path, 'w')``: the smallest payload that shows code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _error(model, path, what="tiny") -> str:
    with pytest.raises(HarnessError) as info:
        load_weights(model, path, what)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_state_dict_loads_into_the_model(tmp_path):
    source = tiny_model()
    with torch.no_grad():
        source[0].weight.add_(1.0)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = load_weights(tiny_model(), tmp_path / "w.pth", "tiny")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path, how):
    marker = tmp_path / "ran.marker"
    payload = {"0.weight": WritesAMarker(marker)}
    path = tmp_path / "evil.pth"
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    message = _error(tiny_model(), path)
    assert "weights_only=True" in message and "state dict of tiny" in message
    assert not marker.exists()
    if how == "torch.save":
        assert "open" in message  # names the refused global
        torch.load(path, weights_only=False)  # the payload is live: full unpickling runs it
        assert marker.exists()


def _truncated(path):
    buffer = io.BytesIO()
    torch.save(tiny_model().state_dict(), buffer)
    path.write_bytes(buffer.getvalue()[:200])


@pytest.mark.parametrize("write, expected", [
    (lambda p: p.write_bytes(b""), "unreadable"),
    (lambda p: p.write_bytes(b"not a checkpoint" * 8), "weights_only=True"),
    (_truncated, "unreadable (RuntimeError"),
    (lambda p: torch.save([torch.zeros(3)], p), "holds a list"),
    (lambda p: torch.save({"model": {"0.weight": torch.zeros(3, 2)}}, p), "holds a dict with keys [model]"),
])
def test_unreadable_or_wrong_content_is_one_line(tmp_path, write, expected):
    path = tmp_path / "bad.pth"
    write(path)
    message = _error(tiny_model(), path)
    assert expected in message and "expected a state dict of tiny" in message


def test_keys_and_shapes_must_match_exactly(tmp_path):
    state = tiny_model().state_dict()
    torch.save({k: v for k, v in state.items() if k != "0.bias"}, tmp_path / "missing.pth")
    assert "does not fit tiny: missing 1 keys [0.bias]" in _error(tiny_model(), tmp_path / "missing.pth")
    torch.save({**state, "extra": torch.zeros(1)}, tmp_path / "extra.pth")
    assert "1 unexpected keys [extra]" in _error(tiny_model(), tmp_path / "extra.pth")
    torch.save(tiny_model(width=4).state_dict(), tmp_path / "wide.pth")
    message = _error(tiny_model(), tmp_path / "wide.pth")
    assert "shape mismatch" in message and "0.weight (4, 2) vs (3, 2)" in message


def test_a_missing_file_names_it(tmp_path):
    assert "checkpoint not found" in _error(tiny_model(), tmp_path / "absent.pth")


def test_safetensors_files_load_and_a_corrupt_one_is_one_line(tmp_path):
    from safetensors.torch import save_file

    source = tiny_model()
    with torch.no_grad():
        source[0].weight.add_(1.0)
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    model = load_weights(tiny_model(), tmp_path / "w.safetensors", "tiny")
    torch.testing.assert_close(model[0].weight, source[0].weight)
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    assert "unreadable (SafetensorError" in _error(tiny_model(), tmp_path / "bad.safetensors")


def test_pickle_files_are_refused_before_torch_2_6(tmp_path, monkeypatch):
    """weights_only=True has a known bypass before torch 2.6 (CVE-2025-32434): only safetensors then."""
    from safetensors.torch import save_file

    torch.save(tiny_model().state_dict(), tmp_path / "w.pth")
    save_file(tiny_model().state_dict(), tmp_path / "w.safetensors")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    message = _error(tiny_model(), tmp_path / "w.pth")
    assert "torch 2.5.1+cu121" in message and "CVE-2025-32434" in message and ".safetensors" in message
    load_weights(tiny_model(), tmp_path / "w.safetensors", "tiny")


@pytest.mark.parametrize("cuda, expected", [(True, "cuda"), (False, "cpu")])
def test_auto_device_is_cuda_when_available(monkeypatch, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device("auto", "X.device") == expected
    assert resolve_device("cpu", "X.device") == "cpu"


def test_explicit_devices_are_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda:1", "X.device") == "cuda:1"
    with pytest.raises(HarnessError, match=r"X.device = 'gpu' is not a torch device; expected 'auto'"):
        resolve_device("gpu", "X.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HarnessError, match=r"X.device = 'cuda' but torch.cuda.is_available\(\) is False"):
        resolve_device("cuda", "X.device")
