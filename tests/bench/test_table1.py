"""Table 1 at smoke size end to end: every row fine-tunes the 3DETR- and the GroupFree3D-style head."""
from __future__ import annotations

import json

import gin
import pytest

from bench.config import parse_config
from bench.runner import Experiment

HEADS = ("3detr", "groupfree")


@pytest.fixture(autouse=True)
def _no_env_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_table1_smoke_runs_both_heads_for_every_row(tmp_path):
    gin.clear_config()
    parse_config(["tables/table1_smoke.gin"])
    experiment = Experiment()
    assert [t().key for t in experiment.tasks] == ["det-3detr", "det-groupfree"]
    folder = experiment.run(tmp_path)
    runs = json.loads((folder / "metrics.json").read_text())["runs"]
    assert [r["row"] for r in runs] == ["none", "Point-MAE", "Bridge3D-style", "ours"]
    for run in runs:
        for head in HEADS:
            assert 0.0 <= run["metrics"][f"synthetic/det-{head}/AP25"] <= 100.0
        assert not any(key.startswith(("synthetic/det/", "synthetic/seg/")) for key in run["metrics"])
    # One fine-tuned model per row and head (each row has its own pretrained encoder).
    assert len(list((tmp_path / "cache" / "finetune").glob("det-*/checkpoint.pt"))) == 2 * len(runs)
    markdown = (folder / "table1.md").read_text()
    # Each head's columns stand beside the paper's block of that head: 3DETR/+Ours 68.2, GroupFree3D/+Ours 72.3.
    ours = next(line for line in markdown.splitlines() if line.startswith("| ours |"))
    assert "68.2 (+7.1)" in ours and "72.3 (+6.2)" in ours
