"""The tokenization figure: written from a tiny synthetic frame; the CLI fails in one line without data."""
from __future__ import annotations

import numpy as np
import torch

from bench.plots import tokenization
from methods.tokenizers import KnnTokenizer, SamGuidedTokenizer


def test_plot_tokenization_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    pix = np.stack([rng.integers(0, 24, 300), rng.integers(0, 32, 300)], axis=1)
    xyz = torch.from_numpy(np.c_[pix[:, 1], pix[:, 0], rng.random(300)].astype(np.float32) / 10)
    regions = torch.from_numpy((pix[:, 1] // 8 + 1) * (pix[:, 0] > 2))  # 4 vertical bands, top rows none
    knn = KnnTokenizer(num_tokens=12, group_size=16)(xyz, regions)
    sam = SamGuidedTokenizer(num_tokens=12, group_size=16)(xyz, regions)
    path = tokenization.plot_tokenization(image, pix, regions, knn, sam, tmp_path / "sub" / "fig.png", title="tiny")
    assert path == tmp_path / "sub" / "fig.png"
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_without_real_data_fails_in_one_line(tmp_path, capsys):
    code = tokenization.main(["--out", str(tmp_path), "--real-root", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing" in err
    assert not list(tmp_path.iterdir())
