"""Result tables built from the MLflow runs: mean +- std over seeds, paired tests, the paper beside ours.

    records = records_from_mlflow(uri, parent_run_id)          # one record per child run (row, seed)
    table = build_table(records, spec)                          # long format, one line per (row, column)
    write_table(folder, table, spec, conventions)               # <name>.csv / .md / .tex (bench.table_formats)

The table is tidy ("long"): one line per (row, column) with ``n, mean, std, delta, delta_std,
n_paired, p_value, mdd, paper, paper_delta``. Renderers pivot it to one line per row. Statistics:
``std`` uses ddof=1 over the seeds with a finite value; ``delta`` is the difference of the row's and
the baseline's means; ``p_value`` is a two-sided paired t-test (``scipy.stats.ttest_rel``) over the
seeds where both rows have a finite value, NaN when fewer than two such seeds or when the paired
differences have zero variance (the t statistic is undefined there, not infinitely significant).
``mdd`` is the minimal detectable difference of that test with those seeds (``bench.seed_statistics``):
by default the half-width of the 95 % confidence interval of the mean paired difference, the smallest
|delta| this design could have called significant; NaN with fewer than two paired seeds.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import gin

from bench.seed_statistics import finite_values, paired_comparison, seed_summary
from infra.checks import check_number

if TYPE_CHECKING:  # pandas costs half a second to import; only commands that build tables pay it
    import pandas as pd

PAPER_DIR = pathlib.Path(__file__).resolve().parents[1] / "results" / "paper"
_GROUP_COLUMNS = ("detector", "backbone")  # how Tables 1-2 name their blocks
COLUMNS = ("row", "paper_row", "column", "paper_column", "n", "mean", "std", "delta", "delta_std",
           "n_paired", "p_value", "mdd", "paper", "paper_delta")


@gin.register
@dataclasses.dataclass(frozen=True)
class TableSpec:
    """What one result table shows.

    Args:
      name: file stem and title (e.g. ``table3``).
      rows: our row name -> the paper row it corresponds to ("" if none), in display order. Paper rows
        are named as in ``results/paper/<paper_table>.csv``; ``group/row`` (e.g. ``3DETR/+Ours``)
        where the row name repeats across the blocks of Tables 1-2.
      baseline_row: our row every delta and test is taken against.
      columns: our metric keys (e.g. ``synthetic/det/AP25``), in display order.
      paper_table: ``table1`` .. ``table4``, or "" for no paper columns.
      paper_columns: our column -> the paper's column (e.g. ``scannet/det/AP25``).
      paper_groups: our column -> the block of the paper's table its numbers come from (e.g.
        ``'synthetic/det-groupfree/AP25': 'GroupFree3D'``): in that column a row's paper counterpart is
        ``<group>/<rows[row]>``, so one row can stand beside Table 1's 3DETR and GroupFree3D blocks.
      notes: conventions of this table, printed under it.
      alpha: significance level of the two-sided paired t-test: the '*' marks and the minimal detectable
        difference use it [choice: 0.05].
      mdd_power: the power at which the minimal detectable difference (MDD) is stated. 0.5 (default) is
        the half-width of the (1 - alpha) confidence interval of the mean paired difference: the smallest
        |delta| the test could call significant with the seeds run. 0.8 is the common power-based MDD,
        the true difference the test would detect 80 % of the time. See ``minimal_detectable_difference``.
    """

    name: str
    rows: dict[str, str]
    baseline_row: str
    columns: list[str]
    paper_table: str = ""
    paper_columns: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    paper_groups: dict[str, str] = dataclasses.field(default_factory=dict)
    alpha: float = 0.05
    mdd_power: float = 0.5

    def __post_init__(self):
        _check_text("name", self.name)
        _check_mapping("rows", self.rows, "row name -> paper row ('' for none)", allow_empty_values=True)
        _check_text("baseline_row", self.baseline_row)
        if isinstance(self.columns, str) or not isinstance(self.columns, Sequence) or not self.columns \
                or not all(isinstance(c, str) and c for c in self.columns):
            raise ValueError(f"TableSpec.columns: expected a non-empty list of metric keys, got {self.columns!r}")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"TableSpec.columns: {self.columns!r} names a column twice")
        _check_text("paper_table", self.paper_table, allow_empty=True)
        if self.paper_table and not (PAPER_DIR / f"{self.paper_table}.csv").is_file():
            raise ValueError(f"TableSpec.paper_table: {self.paper_table!r} is none of the paper's tables "
                             f"({', '.join(sorted(p.stem for p in PAPER_DIR.glob('*.csv')))})")
        for field in ("paper_columns", "paper_groups"):
            _check_mapping(field, getattr(self, field), "our column -> the paper's", allow_empty=True)
        if isinstance(self.notes, str) or not all(isinstance(n, str) for n in self.notes):
            raise ValueError(f"TableSpec.notes: expected a list of strings, got {self.notes!r}")
        if self.baseline_row not in self.rows:
            raise ValueError(f"TableSpec.baseline_row: {self.baseline_row!r} is not one of its rows {list(self.rows)}")
        for field in ("paper_columns", "paper_groups"):
            unknown = set(getattr(self, field)) - set(self.columns)
            if unknown:
                raise ValueError(f"TableSpec.{field}: names columns that are not in columns: {sorted(unknown)}")
        check_number("TableSpec.alpha", self.alpha, 0.0, 1.0, low_open=True, high_open=True)
        check_number("TableSpec.mdd_power", self.mdd_power, 0.5, 1.0, high_open=True)

    def paper_ref(self, row: str, column: str) -> str:
        """The paper row beside ``row`` in ``column``: ``rows[row]``, under ``paper_groups[column]`` if set."""
        ref, group = self.rows[row], self.paper_groups.get(column, "")
        return f"{group}/{ref}" if ref and group else ref


def _check_text(field: str, value, allow_empty: bool = False) -> None:
    if not isinstance(value, str) or not (value or allow_empty):
        raise ValueError(f"TableSpec.{field}: expected a {'' if allow_empty else 'non-empty '}string, got {value!r}")


def _check_mapping(field: str, value, what: str, allow_empty: bool = False, allow_empty_values: bool = False) -> None:
    ok = isinstance(value, Mapping) and (value or allow_empty) and all(
        isinstance(k, str) and k and isinstance(v, str) and (v or allow_empty_values) for k, v in value.items())
    if not ok:
        raise ValueError(f"TableSpec.{field}: expected a {'' if allow_empty else 'non-empty '}dict of {what} "
                         f"(strings), got {value!r}")


# --- reading: MLflow runs and the paper's numbers

def records_from_mlflow(tracking, parent_run_id: str, include_unfinished: bool = False) -> list[dict]:
    """The child runs of ``parent_run_id`` as ``{row, seed, run_id, metrics}`` records, oldest first.

    ``tracking`` is a tracking URI or a store (``bench.mlflow_store``). ``metrics`` holds each key's
    latest value (highest step, as MLflow reports it), so a loss curve contributes its last epoch. Runs
    that did not end FINISHED are skipped unless asked for: a failed run's metrics are partial. Seeds
    are ints when the tag parses as one.
    """
    from bench.mlflow_store import as_store

    return records_from_runs(as_store(tracking).child_runs(parent_run_id), include_unfinished)


def records_from_runs(runs: Sequence[dict], include_unfinished: bool = False) -> list[dict]:
    """``records_from_mlflow`` of child runs already read (``MlflowStore.child_runs``'s dicts)."""
    records = []
    for run in sorted(runs, key=lambda r: (r["start_time"], r["run_id"])):
        if run["status"] != "FINISHED" and not include_unfinished:
            continue
        tags = run["tags"]
        if "row" not in tags:
            continue  # not a table row (e.g. a helper run nested under the same parent)
        seed = tags.get("seed", "")
        records.append({"row": tags["row"], "seed": int(seed) if re.fullmatch(r"-?\d+", seed) else seed,
                        "run_id": run["run_id"], "metrics": dict(run["metrics"])})
    return records


def preload() -> None:
    """Import what building a table needs (pandas, scipy.special), which the functions here import lazily."""
    import pandas  # noqa: F401
    import scipy.special  # noqa: F401


def load_paper_table(name: str, folder: str | os.PathLike = PAPER_DIR) -> pd.DataFrame:
    """``results/paper/<name>.csv`` as printed ('-' cells are NaN; row names such as "none" stay text)."""
    import pandas as pd

    return pd.read_csv(pathlib.Path(folder) / f"{name}.csv", keep_default_na=False, na_values=[""])


def paper_row(paper: pd.DataFrame, ref: str) -> pd.Series | None:
    """The paper row named ``ref`` (``row`` or ``group/row``); None for ""; KeyError if absent or ambiguous."""
    if not ref:
        return None
    group = next((c for c in _GROUP_COLUMNS if c in paper.columns), None)
    hits = paper[paper["row"] == ref]
    if group and len(hits) != 1 and "/" in ref:
        head, _, tail = ref.partition("/")
        hits = paper[(paper[group] == head) & (paper["row"] == tail)]
    if len(hits) != 1:
        what = "is ambiguous (name it group/row)" if len(hits) > 1 else "not found"
        raise KeyError(f"paper row {ref!r} {what}; rows: {list(paper['row'])}")
    return hits.iloc[0]


def build_table(records: Sequence[Mapping], spec: TableSpec, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table: one line per (row, column) of ``spec``, in its order (columns ``COLUMNS``).

    ``n`` counts seeds with a finite value; ``mean``/``std`` (ddof=1, NaN for n < 2) are over those;
    ``delta`` = mean - baseline mean (0 on the baseline row); ``delta_std``, ``n_paired``, the
    two-sided paired ``p_value`` and ``mdd`` (at ``spec.alpha`` and ``spec.mdd_power``; NaN on the
    baseline row) use seeds finite in both rows (see the module docstring for NaN);
    ``paper``/``paper_delta``: the paper's value for the row's counterpart and its difference to the
    paper's counterpart of ``baseline_row``. Records of rows not in ``spec.rows`` are ignored.
    ``paper`` defaults to ``load_paper_table(spec.paper_table)``.
    """
    by_row: dict[str, dict] = {row: {} for row in spec.rows}
    for record in records:
        row, seed = record["row"], record["seed"]
        if row not in by_row:
            continue
        if seed in by_row[row]:
            raise ValueError(f"two records for row {row!r} seed {seed!r}")
        by_row[row][seed] = record["metrics"]
    # Seeds in a fixed order: workers finish in any order, and float sums depend on it.
    by_row = {row: dict(sorted(seeds.items(), key=lambda kv: str(kv[0]))) for row, seeds in by_row.items()}
    if paper is None and spec.paper_table:
        paper = load_paper_table(spec.paper_table)

    lines = []
    for column in spec.columns:
        base = finite_values({s: m.get(column, math.nan) for s, m in by_row[spec.baseline_row].items()})
        base_mean = seed_summary(base)[1]
        paper_column = spec.paper_columns.get(column, "")
        # A column without a paper counterpart (e.g. a head the paper does not have) looks up no paper row.
        paper_base = paper_row(paper, spec.paper_ref(spec.baseline_row, column)) \
            if paper is not None and paper_column else None
        for row in spec.rows:
            ref = spec.paper_ref(row, column)
            values = finite_values({s: m.get(column, math.nan) for s, m in by_row[row].items()})
            n, mean, std = seed_summary(values)
            line = {"row": row, "paper_row": ref, "column": column, "paper_column": paper_column,
                    "n": n, "mean": mean, "std": std}
            if row == spec.baseline_row:
                line.update(delta=0.0 if n else math.nan, delta_std=math.nan, n_paired=n, p_value=math.nan,
                            mdd=math.nan)
            else:
                line.update(delta=mean - base_mean, **paired_comparison(values, base, spec.alpha, spec.mdd_power))
            line["paper"], line["paper_delta"] = _paper_cells(paper, ref, paper_base, paper_column)
            lines.append(line)
    import pandas as pd

    table = pd.DataFrame(lines, columns=list(COLUMNS))
    order = {row: i for i, row in enumerate(spec.rows)}
    return table.sort_values("row", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def _paper_cells(paper, ref: str, paper_base, paper_column: str) -> tuple[float, float]:
    if paper is None or not ref or not paper_column:
        return math.nan, math.nan
    value = float(paper_row(paper, ref)[paper_column])
    base = float(paper_base[paper_column]) if paper_base is not None else math.nan
    return value, value - base
