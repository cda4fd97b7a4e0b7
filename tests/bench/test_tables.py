"""Paper reference numbers, table statistics against hand-computed values, renderers, MLflow reading."""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.seed_statistics import minimal_detectable_difference, paired_t_test
from bench.table_formats import to_csv, to_latex, to_markdown, write_table
from bench.tables import PAPER_DIR, TableSpec, build_table, load_paper_table, paper_row, records_from_mlflow

METRICS = ["scannet/det/AP25", "scannet/det/AP50", "s3dis/seg/mIoU", "s3dis/seg/mAcc"]

# Written from ../shared/seeds/002_4dcc2442c2f563b7.txt (the paper's Tables 3 and 4), not from the CSVs.
TABLE3 = {
    "none": (61.1, 38.6, 61.1, 67.2),
    "DD": (62.4, 41.7, 66.2, 71.3),
    "DD+MTP": (64.5, 44.3, 68.7, 74.1),
    "DD+MTP+BR": (66.0, 46.1, 69.7, 75.9),
    "DD+MTP+SAM": (67.1, 47.0, 70.9, 77.0),
    "DD+MTP+BR+SAM": (68.2, 48.4, 71.8, 78.2),
}
TABLE3_TICKS = {"none": "", "DD": "DD", "DD+MTP": "DD MTP", "DD+MTP+BR": "DD MTP BR",
                "DD+MTP+SAM": "DD MTP SAM", "DD+MTP+BR+SAM": "DD MTP BR SAM"}
TABLE4 = {
    "stage1": (65.2, 45.1, 69.1, 75.3),
    "stage1+MTP same stage": (66.0, 46.3, 69.9, 76.1),
    "stage1+stage2": (68.2, 48.4, 71.8, 78.2),
}


def _values(df: pd.DataFrame, columns=METRICS) -> dict[str, tuple]:
    return {r["row"]: tuple(float(r[c]) for c in columns) for _, r in df.iterrows()}


def test_paper_table3_every_number_and_component_ticks():
    t3 = load_paper_table("table3")
    assert list(t3["row"]) == list(TABLE3)
    assert _values(t3) == TABLE3
    for _, r in t3.iterrows():
        ticked = " ".join(c for c in ("DD", "MTP", "BR", "SAM") if r[c])
        assert ticked == TABLE3_TICKS[r["row"]]


def test_paper_table4_every_number():
    t4 = load_paper_table("table4")
    assert list(t4["row"]) == list(TABLE4)
    assert _values(t4) == TABLE4
    assert list(t4["printed"]) == ["Stage 1", "Stage 1 + MTP in same stage", "Stage 1 + Stage 2 (Ours)"]


@pytest.mark.parametrize("ref, expected", [
    ("VoteNet", (57.7, 32.9, 58.6, 33.5)),
    ("Hou et al.", (math.nan, 36.4, math.nan, 39.3)),
    ("3DETR/+Plain Transformer", (57.6, 31.9, 61.1, 38.6)),
    ("+Point-BERT", (math.nan, math.nan, 61.0, 38.3)),
    ("3DETR/+Bridge3D", (61.8, 37.1, 65.3, 44.2)),
    ("3DETR/+Ours", (63.5, 39.5, 68.2, 48.4)),
    ("GroupFree3D", (63.0, 45.2, 67.3, 48.9)),
    ("GroupFree3D/+PiMAE", (65.0, 46.8, 67.9, 50.5)),
    ("GroupFree3D/+Ours", (68.9, 52.1, 72.3, 55.7)),
])
def test_paper_table1_spot_checks(ref, expected):
    r = paper_row(load_paper_table("table1"), ref)
    got = tuple(float(r[c]) for c in ["sunrgbd/det/AP25", "sunrgbd/det/AP50", "scannet/det/AP25", "scannet/det/AP50"])
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("ref, expected", [
    ("SR-UNet", (68.2, 75.5, 72.1, 80.7)),
    ("DepthContrast", (70.6, math.nan, 73.1, math.nan)),
    ("PViT+Pix4Point", (69.6, 75.2, math.nan, math.nan)),
    ("Plain Transformer", (61.1, 67.2, 67.3, 73.1)),
    ("+Bridge3D", (70.2, 76.1, 73.9, 80.2)),
    ("+Ours", (71.8, 78.2, 75.4, 81.5)),
])
def test_paper_table2_spot_checks(ref, expected):
    r = paper_row(load_paper_table("table2"), ref)
    got = tuple(float(r[c]) for c in ["s3dis/seg/mIoU", "s3dis/seg/mAcc", "scannet/seg/mIoU", "scannet/seg/mAcc"])
    np.testing.assert_array_equal(got, expected)


def test_paper_tables_reproduce_the_printed_gains_and_agree_with_each_other():
    t1, t2, t3 = (load_paper_table(f"table{i}") for i in (1, 2, 3))
    gains = {("3DETR", "sunrgbd/det/AP25"): 1.7, ("3DETR", "sunrgbd/det/AP50"): 2.4,
             ("3DETR", "scannet/det/AP25"): 2.9, ("3DETR", "scannet/det/AP50"): 4.2,
             ("GroupFree3D", "sunrgbd/det/AP25"): 1.0, ("GroupFree3D", "sunrgbd/det/AP50"): 3.6,
             ("GroupFree3D", "scannet/det/AP25"): 3.2, ("GroupFree3D", "scannet/det/AP50"): 3.8}
    for (group, column), gain in gains.items():
        diff = paper_row(t1, f"{group}/+Ours")[column] - paper_row(t1, f"{group}/+Bridge3D")[column]
        assert diff == pytest.approx(gain, abs=1e-9)
    for column, gain in {"s3dis/seg/mIoU": 1.6, "s3dis/seg/mAcc": 2.1, "scannet/seg/mIoU": 1.5, "scannet/seg/mAcc": 1.3}.items():
        assert paper_row(t2, "+Ours")[column] - paper_row(t2, "+Bridge3D")[column] == pytest.approx(gain, abs=1e-9)
    # Table 3's ends are 3DETR's plain transformer / full model (Table 1) and Table 2's plain transformer / ours.
    for t3_row, t1_ref, t2_ref in [("none", "3DETR/+Plain Transformer", "Plain Transformer"), ("DD+MTP+BR+SAM", "3DETR/+Ours", "+Ours")]:
        r3 = paper_row(t3, t3_row)
        assert (r3["scannet/det/AP25"], r3["scannet/det/AP50"]) == tuple(paper_row(t1, t1_ref)[["scannet/det/AP25", "scannet/det/AP50"]])
        assert (r3["s3dis/seg/mIoU"], r3["s3dis/seg/mAcc"]) == tuple(paper_row(t2, t2_ref)[["s3dis/seg/mIoU", "s3dis/seg/mAcc"]])


def test_paper_row_names_an_ambiguous_row_by_group():
    with pytest.raises(KeyError, match="ambiguous"):
        paper_row(load_paper_table("table1"), "+Ours")
    with pytest.raises(KeyError, match="not found"):
        paper_row(load_paper_table("table1"), "3DETR/+Nothing")
    assert (PAPER_DIR / "README.md").is_file()


# --- build_table on hand-made records

SPEC = TableSpec(name="t3", rows={"base": "none", "dd": "DD", "full": "DD+MTP+BR+SAM", "extra": ""},
                 baseline_row="base", columns=["synthetic/det/AP25", "synthetic/seg/mIoU"], paper_table="table3",
                 paper_columns={"synthetic/det/AP25": "scannet/det/AP25", "synthetic/seg/mIoU": "s3dis/seg/mIoU"},
                 notes=["hand-made records"])
AP, MIOU = SPEC.columns
HAND = {  # (row, seed) -> (AP25, mIoU)
    ("base", 0): (10.0, 50.0), ("base", 1): (12.0, 52.0), ("base", 2): (14.0, 51.0),
    ("dd", 0): (11.0, 49.0), ("dd", 1): (14.0, 50.0), ("dd", 2): (15.0, math.nan),
    ("full", 0): (13.0, 55.0), ("full", 1): (15.0, 57.0), ("full", 2): (17.0, 56.0),
}


def _records():
    records = [{"row": row, "seed": seed, "run_id": f"{row}{seed}", "metrics": {AP: ap, MIOU: miou}}
               for (row, seed), (ap, miou) in HAND.items()]
    records.append({"row": "not-in-spec", "seed": 0, "run_id": "x", "metrics": {AP: 99.0}})
    return records


def _line(table, row, column):
    hit = table[(table["row"] == row) & (table["column"] == column)]
    assert len(hit) == 1
    return hit.iloc[0]


def test_build_table_means_stds_counts():
    table = build_table(_records(), SPEC)
    assert len(table) == len(SPEC.rows) * len(SPEC.columns)
    assert list(dict.fromkeys(table["row"])) == list(SPEC.rows)
    base = _line(table, "base", AP)
    assert (base["n"], base["mean"], base["std"]) == (3, 12.0, 2.0)  # std of 10, 12, 14 (ddof=1) = 2
    dd = _line(table, "dd", MIOU)  # seed 2 is NaN: two seeds count
    assert dd["n"] == 2 and dd["mean"] == 49.5 and dd["std"] == pytest.approx(math.sqrt(0.5))
    extra = _line(table, "extra", AP)  # a row with no runs
    assert extra["n"] == 0 and math.isnan(extra["mean"]) and math.isnan(extra["p_value"])


def test_build_table_deltas_and_paired_test():
    table = build_table(_records(), SPEC)
    dd_ap = _line(table, "dd", AP)
    assert dd_ap["delta"] == pytest.approx(40 / 3 - 12.0)  # mean(11, 14, 15) - mean(10, 12, 14) > 0
    assert dd_ap["p_value"] == pytest.approx(stats.ttest_rel([11, 14, 15], [10, 12, 14]).pvalue)
    assert dd_ap["delta_std"] == pytest.approx(np.std([1, 2, 1], ddof=1)) and dd_ap["n_paired"] == 3
    dd_miou = _line(table, "dd", MIOU)  # paired on seeds 0 and 1 only
    assert dd_miou["delta"] == pytest.approx(49.5 - 51.0) and dd_miou["delta"] < 0
    assert dd_miou["n_paired"] == 2
    assert dd_miou["p_value"] == pytest.approx(stats.ttest_rel([49, 50], [50, 52]).pvalue)
    full_ap = _line(table, "full", AP)  # +3 on every seed: zero variance of the differences -> no test
    assert full_ap["delta"] == pytest.approx(3.0) and math.isnan(full_ap["p_value"])
    base = _line(table, "base", AP)
    assert base["delta"] == 0.0 and math.isnan(base["p_value"])


# t quantiles by hand: with 2 degrees of freedom t_p = (2p - 1) / sqrt(2p(1 - p)), so t_0.975 = 0.95 /
# sqrt(0.04875) = 4.3027 and t_0.8 = 0.6 / sqrt(0.32) = 1.0607; with 1, t_p = tan(pi (p - 1/2)), t_0.975 = 12.706.
T975_DF2, T80_DF2, T975_DF1 = 0.95 / math.sqrt(0.04875), 0.6 / math.sqrt(0.32), math.tan(0.475 * math.pi)


def test_minimal_detectable_difference_by_hand():
    # Differences 1, 2, 3: s_d = 1, n = 3: the 95 % CI half-width of their mean is 4.303 / sqrt(3) = 2.484.
    assert T975_DF2 == pytest.approx(4.302653, abs=1e-6)
    assert minimal_detectable_difference(1.0, 3) == pytest.approx(T975_DF2 / math.sqrt(3)) == pytest.approx(2.4841, abs=1e-4)
    # At 80 % power: (4.303 + 1.061) / sqrt(3) = 3.097.
    assert minimal_detectable_difference(1.0, 3, power=0.8) == pytest.approx((T975_DF2 + T80_DF2) / math.sqrt(3))
    assert minimal_detectable_difference(2.0, 3, alpha=0.05) == pytest.approx(2 * T975_DF2 / math.sqrt(3))
    assert math.isnan(minimal_detectable_difference(1.0, 1)) and minimal_detectable_difference(0.0, 4) == 0.0
    # The CI half-width is the p = alpha boundary: a mean difference of exactly the MDD gives p = 0.05.
    diff = np.array([1.0, 2.0, 3.0])
    shifted = diff - diff.mean() + minimal_detectable_difference(1.0, 3)
    assert stats.ttest_1samp(shifted, 0.0).pvalue == pytest.approx(0.05)


def test_build_table_minimal_detectable_difference():
    table = build_table(_records(), SPEC)
    # dd AP25: differences 1, 2, 1 -> s_d = sqrt(1/3); MDD = 4.303 * sqrt(1/3) / sqrt(3) = 4.303 / 3 = 1.434.
    assert _line(table, "dd", AP)["mdd"] == pytest.approx(T975_DF2 / 3)
    # dd mIoU: seeds 0, 1 only, differences -1, -2 -> s_d = sqrt(1/2); MDD = 12.706 * sqrt(1/2) / sqrt(2) = 6.353.
    assert _line(table, "dd", MIOU)["mdd"] == pytest.approx(T975_DF1 / 2)
    assert _line(table, "full", AP)["mdd"] == 0.0  # constant differences: s_d = 0 (and no test)
    assert math.isnan(_line(table, "base", AP)["mdd"]) and math.isnan(_line(table, "extra", AP)["mdd"])
    powered = build_table(_records(), TableSpec(**{**vars(SPEC), "mdd_power": 0.8}))
    assert _line(powered, "dd", AP)["mdd"] == pytest.approx((T975_DF2 + T80_DF2) / 3)
    strict = build_table(_records(), TableSpec(**{**vars(SPEC), "alpha": 0.01}))
    assert _line(strict, "dd", AP)["mdd"] == pytest.approx(stats.t.ppf(0.995, 2) / 3)
    one = build_table([r for r in _records() if r["seed"] == 0], SPEC)  # one paired seed: no MDD
    assert math.isnan(_line(one, "dd", AP)["mdd"])


@pytest.mark.parametrize("field, value", [("alpha", 0.0), ("alpha", 1.5), ("mdd_power", 0.3), ("mdd_power", 1.0)])
def test_table_spec_refuses_bad_test_parameters(field, value):
    with pytest.raises(ValueError, match=f"{field}: expected") as err:
        TableSpec(**{**vars(SPEC), field: value})
    assert "\n" not in str(err.value)


def test_build_table_paper_columns():
    table = build_table(_records(), SPEC)
    assert _line(table, "dd", AP)["paper"] == 62.4
    assert _line(table, "dd", AP)["paper_delta"] == pytest.approx(62.4 - 61.1)
    assert _line(table, "full", MIOU)["paper_delta"] == pytest.approx(71.8 - 61.1)
    assert _line(table, "base", MIOU)["paper_delta"] == 0.0
    assert math.isnan(_line(table, "extra", AP)["paper"])


def test_paper_groups_put_each_column_beside_its_block_of_table1():
    spec = TableSpec(name="t1", rows={"none": "+Plain Transformer", "ours": "+Ours"}, baseline_row="none",
                     columns=["synthetic/det-3detr/AP25", "synthetic/det-groupfree/AP25"], paper_table="table1",
                     paper_columns={"synthetic/det-3detr/AP25": "scannet/det/AP25",
                                    "synthetic/det-groupfree/AP25": "scannet/det/AP25"},
                     paper_groups={"synthetic/det-3detr/AP25": "3DETR", "synthetic/det-groupfree/AP25": "GroupFree3D"})
    records = [{"row": "none", "seed": 0, "metrics": {}}, {"row": "ours", "seed": 0, "metrics": {}}]
    table = build_table(records, spec)
    detr, groupfree = (_line(table, "ours", column) for column in spec.columns)
    assert (detr["paper_row"], detr["paper"]) == ("3DETR/+Ours", 68.2)
    assert detr["paper_delta"] == pytest.approx(68.2 - 61.1)
    assert (groupfree["paper_row"], groupfree["paper"]) == ("GroupFree3D/+Ours", 72.3)
    assert groupfree["paper_delta"] == pytest.approx(72.3 - 66.1)
    with pytest.raises(ValueError, match="paper_groups"):
        TableSpec(name="x", rows={"a": ""}, baseline_row="a", columns=["m"], paper_groups={"n": "3DETR"})


def test_a_column_without_a_paper_counterpart_beside_grouped_ones_gets_no_paper_cell():
    # Table 1's demo: the demo's own head (det) has no block in the paper's Table 1, whose row names repeat
    # across blocks; looking one up without a group would be ambiguous.
    spec = TableSpec(name="t1", rows={"none": "+Plain Transformer", "ours": "+Ours"}, baseline_row="none",
                     columns=["synthetic/det/AP25", "synthetic/det-3detr/AP25"], paper_table="table1",
                     paper_columns={"synthetic/det-3detr/AP25": "scannet/det/AP25"},
                     paper_groups={"synthetic/det-3detr/AP25": "3DETR"})
    records = [{"row": "none", "seed": 0, "metrics": {"synthetic/det/AP25": 20.0}},
               {"row": "ours", "seed": 0, "metrics": {"synthetic/det/AP25": 22.0}}]
    table = build_table(records, spec)
    own, detr = (_line(table, "ours", column) for column in spec.columns)
    assert math.isnan(own["paper"]) and own["mean"] == 22.0 and own["delta"] == 2.0
    assert detr["paper"] == 68.2


def test_build_table_refuses_duplicate_seeds_and_bad_specs():
    with pytest.raises(ValueError, match="two records"):
        build_table(_records() + [{"row": "base", "seed": 0, "metrics": {}}], SPEC)
    with pytest.raises(ValueError, match="baseline_row"):
        TableSpec(name="x", rows={"a": ""}, baseline_row="b", columns=["m"])


# --- renderers

CONVENTIONS = {"checkpoint": "last epoch", "seeds": "0, 1, 2", "profile": "smoke", "dataset": "synthetic",
               "teacher": "simulated", "masks": "rendered (simulated SAM)", "machine": "test", "wall_time": "1 s",
               "lr_%": "a_b & c"}


def test_markdown_has_header_one_line_per_row_legend_and_conventions():
    md = to_markdown(build_table(_records(), SPEC), SPEC, CONVENTIONS)
    lines = [l for l in md.splitlines() if l.startswith("|")]
    assert len(lines) == 2 + len(SPEC.rows)
    assert lines[0].startswith("| row | paper row | synthetic/det/AP25 | Δ | paper scannet/det/AP25 (Δ) |")
    assert "| base | none | 12.0 ± 2.0 (3) | base | 61.1 |" in md
    assert "| dd | DD | 13.3 ± 2.1 (3) | +1.3 (±1.4) | 62.4 (+1.3) | 49.5 ± 0.7 (2) | -1.5 (±6.4) | 66.2 (+5.1) |" in md
    assert "| full | DD+MTP+BR+SAM | 15.0 ± 2.0 (3) | +3.0 (±0.0) |" in md
    assert "synthetic benchmark (simulation)" in md.splitlines()[0]
    assert "p < 0.05" in md and "paired t-test" in md
    assert "(±m): minimal detectable difference at p < 0.05" in md and "half-width of the 95 % confidence interval" in md
    assert "- checkpoint: last epoch" in md and "- wall_time: 1 s" in md and "- hand-made records" in md


def test_markdown_marks_significance_and_single_seeds():
    records = [{"row": row, "seed": s, "metrics": {AP: v + (row == "dd") * (5 + 0.1 * s)}}
               for row in ("base", "dd") for s, v in enumerate([10.0, 12.0, 11.0])]
    spec = TableSpec(name="s", rows={"base": "", "dd": ""}, baseline_row="base", columns=[AP])
    md = to_markdown(build_table(records, spec), spec, {})
    # Differences 5.0, 5.1, 5.2: s_d = 0.1, MDD = 4.303 * 0.1 / sqrt(3) = 0.248.
    assert "+5.1\\* (±0.2) |" in md and "checkpoint: not stated" in md
    one = to_markdown(build_table(records[:1] + records[3:4], spec), spec, {})
    assert "| base | 10.0 | base |" in one and "| dd | 15.0 | +5.0 |" in one  # one pair: no test, no MDD
    powered = TableSpec(**{**vars(spec), "mdd_power": 0.8})
    md = to_markdown(build_table(records, powered), powered, {}, digits=2)
    # (4.303 + 1.061) * 0.1 / sqrt(3) = 0.31
    assert "+5.10\\* (MDD 0.31) |" in md and "80 % power" in md and "(±m)" not in md


def test_latex_is_booktabs_and_escaped():
    tex = to_latex(build_table(_records(), SPEC), SPEC, CONVENTIONS)
    assert tex.startswith(r"\begin{tabular}{")
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"\end{tabular}" in tex
    assert r"synthetic/det/AP25" in tex and r"wall\_time" in tex and r"lr\_\%: a\_b \& c" in tex
    assert r"12.0 $\pm$ 2.0 (3)" in tex and "±" not in tex
    assert r"+1.3 ($\pm$1.4)" in tex and r"$-$1.5 ($\pm$6.4)" in tex
    assert not any(c in tex for c in "·√−")  # the legend's formula is set in LaTeX too
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == len(SPEC.rows) and all(l.count(" & ") == 1 + 3 * 2 for l in body)
    assert tex.count("{") == tex.count("}")


def test_csv_round_trips_and_write_table(tmp_path):
    table = build_table(_records(), SPEC)
    back = pd.read_csv(io.StringIO(to_csv(table, SPEC, CONVENTIONS)), keep_default_na=False, na_values=[""])
    assert list(back.columns) == list(table.columns) and list(back["row"]) == list(table["row"])
    assert "mdd" in back.columns
    for column in ("n", "mean", "std", "delta", "p_value", "mdd", "paper", "paper_delta"):
        np.testing.assert_allclose(back[column].to_numpy(float), table[column].to_numpy(float), rtol=0, atol=0)
    paths = write_table(tmp_path / "out", table, SPEC, CONVENTIONS)
    assert [p.name for p in paths] == ["t3.csv", "t3.md", "t3.tex"] and all(p.stat().st_size > 0 for p in paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t3.csv", "t3.md", "t3.tex"]


# --- records from a real (temporary) MLflow store

def test_records_from_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("t3", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment, run_name="t3").info.run_id
    for (row, seed), (ap, miou) in HAND.items():
        run = client.create_run(experiment, tags={MLFLOW_PARENT_RUN_ID: parent, "row": row, "seed": str(seed)}).info.run_id
        client.log_metric(run, AP, ap)
        client.log_metric(run, MIOU, miou)
        for epoch, loss in enumerate([3.0, 2.0, 1.5]):
            client.log_metric(run, "pretrain/stage1/loss", loss, step=epoch)
        client.set_terminated(run, "FINISHED")
    failed = client.create_run(experiment, tags={MLFLOW_PARENT_RUN_ID: parent, "row": "base", "seed": "9"}).info.run_id
    client.set_terminated(failed, "FAILED")
    other = client.create_run(experiment, tags={"row": "base", "seed": "0"}).info.run_id  # not a child of parent
    client.set_terminated(other, "FINISHED")
    client.set_terminated(parent, "FINISHED")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    records = records_from_mlflow(uri, parent)
    assert sorted((r["row"], r["seed"]) for r in records) == sorted(HAND)
    by_key = {(r["row"], r["seed"]): r["metrics"] for r in records}
    assert by_key[("dd", 1)][AP] == 14.0 and math.isnan(by_key[("dd", 2)][MIOU])
    assert by_key[("base", 0)]["pretrain/stage1/loss"] == 1.5  # latest epoch
    assert len(records_from_mlflow(uri, parent, include_unfinished=True)) == len(HAND) + 1
    from_store = build_table(records, SPEC)
    from_memory = build_table(_records(), SPEC)
    pd.testing.assert_frame_equal(from_store, from_memory)


def test_table_spec_is_built_by_gin():
    import gin

    gin.parse_config("""
        TableSpec.name = "table4"
        TableSpec.rows = {"stage1": "stage1", "two": "stage1+stage2"}
        TableSpec.baseline_row = "stage1"
        TableSpec.columns = ["synthetic/det/AP25"]
        TableSpec.paper_table = "table4"
        TableSpec.paper_columns = {"synthetic/det/AP25": "scannet/det/AP25"}
        TableSpec.notes = ["checkpoint: last epoch"]
    """)
    spec = gin.get_configurable(TableSpec)()
    table = build_table([], spec)
    assert spec.rows["two"] == "stage1+stage2" and list(table["paper_delta"]) == [0.0, pytest.approx(68.2 - 65.2)]


def test_conventions_name_the_pretraining_data_and_simulations():
    from bench.report import conventions
    from datasets.s3dis import S3DIS_INFO
    from datasets.synthetic import SyntheticIndoor

    real = conventions("paper", [0, 1], S3DIS_INFO, {"pretraining data": "scannet/train"}, 60.0)
    assert real["dataset"] == "s3dis; pretraining frames: scannet/train" and not real["simulation"]
    same = conventions("paper", [0], S3DIS_INFO, {"pretraining data": "s3dis/train"}, 60.0)
    assert same["dataset"] == "s3dis; pretraining frames: s3dis/train"  # always said, e.g. an unlabelled split
    simulated = conventions("demo", [0], S3DIS_INFO, {"pretraining data": "synthetic/train"}, 60.0)
    assert simulated["simulation"] and "synthetic/train" in simulated["dataset"]
    synthetic = SyntheticIndoor(num_train=1, num_val=1).info
    assert conventions("demo", [0], synthetic, {}, 1.0)["dataset"] == "synthetic (simulation)"


def test_the_table_does_not_depend_on_the_order_the_runs_finished_in():
    # Float sums depend on their order: 1e16 + 1 - 1e16 is 0, 1e16 - 1e16 + 1 is 1.
    spec = TableSpec(name="t", rows={"a": "a", "b": "b"}, baseline_row="a", columns=["d/seg/mIoU"])
    values = {0: 1e16, 1: 1.0, 2: -1e16}
    records = [{"row": row, "seed": seed, "metrics": {"d/seg/mIoU": value}}
               for row in ("a", "b") for seed, value in values.items()]
    straight = build_table(records, spec, paper=None)
    shuffled = build_table([records[i] for i in (4, 2, 0, 5, 1, 3)], spec, paper=None)
    pd.testing.assert_frame_equal(straight, shuffled)


def test_the_paired_t_test_is_scipys_to_the_last_bit():
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(2, 8))
        a, b = rng.normal(size=n) * 10, rng.normal(size=n) * 10
        assert paired_t_test(a - b) == stats.ttest_rel(a, b).pvalue
    for n, alpha in ((2, 0.05), (3, 0.01), (10, 0.05)):
        assert minimal_detectable_difference(1.0, n, alpha) == pytest.approx(
            stats.t.ppf(1 - alpha / 2, n - 1) / math.sqrt(n), rel=1e-12)
