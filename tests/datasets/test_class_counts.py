"""Boxes per class in a split, and the table ``python -m datasets counts`` prints for sizing val."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.__main__ import main
from datasets.class_counts import box_counts, box_counts_by_size
from datasets.synthetic import SyntheticIndoor
from datasets.synthetic.dataset import frames_only_scene

SMALL = dict(seed=0, num_train=1, num_val=6, frames_per_scene=2, image_hw=(40, 56))


def _with_labels(labels: list[int]):
    scene = frames_only_scene("s", [])
    scene.box_labels = np.array(labels, dtype=np.int32)
    return scene


def test_box_counts_by_hand():
    counts = box_counts([_with_labels([0, 2, 2]), _with_labels([]), _with_labels([2, 1])], ("a", "b", "c", "d"))
    assert counts == {"a": 1, "b": 1, "c": 3, "d": 0}


def test_counts_by_size_are_the_counts_of_smaller_splits():
    ds = SyntheticIndoor(**SMALL)
    by_size = box_counts_by_size(ds, "val", [0, 2, 6])
    assert sum(by_size[0].values()) == 0
    for n in (2, 6):
        # Val scenes do not depend on the split size, so the first n scenes are the val split of size n.
        smaller = SyntheticIndoor(**{**SMALL, "num_val": n})
        assert by_size[n] == box_counts(smaller.scenes("val"), ds.info.det_classes)
    assert all(by_size[6][c] >= by_size[2][c] for c in ds.info.det_classes) and sum(by_size[6].values()) > 0


def test_counts_by_size_rejects_sizes_outside_the_split():
    with pytest.raises(ValueError, match=r"0\.\.6"):
        box_counts_by_size(SyntheticIndoor(**SMALL), "val", [3, 7])


def test_cli_counts_prints_one_row_per_class(capsys):
    assert main(["counts", "--sizes", "1", "3", "--frames", "1", "--hw", "24", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["n", "1", "3"]
    assert [row.split()[0] for row in lines[2:]] == [*SyntheticIndoor().info.det_classes, "all"]
    assert main(["counts", "--split", "pretrain"]) == 2
    assert "unlabelled" in capsys.readouterr().err
