"""Result tables built from the MLflow runs: mean +- std over seeds, paired tests, the paper beside ours.

    records = records_from_mlflow(uri, parent_run_id)          # one record per child run (row, seed)
    table = build_table(records, spec)                          # long format, one line per (row, column)
    write_table(folder, table, spec, conventions)               # <name>.csv / .md / .tex

The table is tidy ("long"): one line per (row, column) with ``n, mean, std, delta, delta_std,
n_paired, p_value, mdd, paper, paper_delta``. Renderers pivot it to one line per row. Statistics:
``std`` uses ddof=1 over the seeds with a finite value; ``delta`` is the difference of the row's and
the baseline's means; ``p_value`` is a two-sided paired t-test (``scipy.stats.ttest_rel``) over the
seeds where both rows have a finite value, NaN when fewer than two such seeds or when the paired
differences have zero variance (the t statistic is undefined there, not infinitely significant).
``mdd`` is the minimal detectable difference of that test with those seeds (``minimal_detectable_difference``):
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
import numpy as np

from bench.io import atomic_write_text

if TYPE_CHECKING:  # pandas costs half a second to import; only commands that build tables pay it
    import pandas as pd

PAPER_DIR = pathlib.Path(__file__).resolve().parents[1] / "results" / "paper"
# Conventions every table states; a missing one is printed as "not stated" rather than left out.
CONVENTION_KEYS = ("checkpoint", "seeds", "profile", "dataset", "teacher", "masks", "machine", "wall_time")
SIMULATION_LABEL = "synthetic benchmark (simulation)"
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
        if not self.rows or not self.columns:
            raise ValueError(f"TableSpec {self.name!r}: rows and columns must not be empty")
        if self.baseline_row not in self.rows:
            raise ValueError(f"TableSpec {self.name!r}: baseline_row {self.baseline_row!r} is not one of rows {list(self.rows)}")
        for field in ("paper_columns", "paper_groups"):
            unknown = set(getattr(self, field)) - set(self.columns)
            if unknown:
                raise ValueError(f"TableSpec {self.name!r}: {field} name columns not in columns: {sorted(unknown)}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"TableSpec {self.name!r}: alpha: expected 0 < alpha < 1, got {self.alpha}")
        if not 0.5 <= self.mdd_power < 1.0:
            raise ValueError(f"TableSpec {self.name!r}: mdd_power: expected 0.5 <= mdd_power < 1, got {self.mdd_power}")

    def paper_ref(self, row: str, column: str) -> str:
        """The paper row beside ``row`` in ``column``: ``rows[row]``, under ``paper_groups[column]`` if set."""
        ref, group = self.rows[row], self.paper_groups.get(column, "")
        return f"{group}/{ref}" if ref and group else ref


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


# --- statistics

def _finite(values: Mapping) -> dict:
    return {s: float(v) for s, v in values.items() if v is not None and math.isfinite(float(v))}


def minimal_detectable_difference(diff_std: float, n: int, alpha: float = 0.05, power: float = 0.5) -> float:
    """Smallest mean difference a two-sided paired t-test at ``alpha`` detects over ``n`` paired seeds.

    MDD = (t_{1-alpha/2, n-1} + t_{power, n-1}) * s_d / sqrt(n), with s_d = ``diff_std`` the standard
    deviation (ddof=1) of the paired differences. At ``power`` 0.5 (t = 0) this is the half-width of the
    (1 - alpha) confidence interval of the mean difference: an observed |delta| below it cannot reach
    p < alpha. NaN for n < 2 or a non-finite s_d; 0 when the differences are constant.
    """
    if n < 2 or not math.isfinite(diff_std):
        return math.nan
    from scipy.special import stdtrit  # Student t quantiles; scipy.stats costs a second more to import

    t = stdtrit(n - 1, 1.0 - alpha / 2.0) + stdtrit(n - 1, power)
    return float(t * diff_std / math.sqrt(n))


def paired_t_test(diff: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test on the differences ``diff`` (``scipy.stats.ttest_rel``'s,
    from the Student t distribution of ``scipy.special``: importing scipy.stats costs a cached re-run
    about a second)."""
    from scipy.special import stdtr

    n = len(diff)
    # ttest_rel's own order of operations (mean of squared deviations times n / (n - 1)), so the p-values
    # match it to the last bit and a table's CSV did not change with the switch.
    mean = np.mean(diff)
    variance = np.mean((diff - mean) ** 2) * (float(n) / (n - 1))
    t = mean / np.sqrt(variance / n)
    return float(2.0 * stdtr(float(n - 1), -abs(t)))


def _paired(values: dict, base: dict, alpha: float, power: float) -> dict[str, float]:
    """Paired comparison over the seeds both rows have: std of the differences, t-test p-value, MDD."""
    seeds = sorted(set(values) & set(base), key=str)
    out = {"n_paired": len(seeds), "delta_std": math.nan, "p_value": math.nan, "mdd": math.nan}
    if len(seeds) < 2:
        return out
    a = np.array([values[s] for s in seeds])
    b = np.array([base[s] for s in seeds])
    diff = a - b
    out["delta_std"] = float(np.std(diff, ddof=1))
    out["mdd"] = minimal_detectable_difference(out["delta_std"], len(seeds), alpha, power)
    # Constant differences: ttest_rel answers p=0 (or NaN); the variance estimate is zero, so no test.
    if out["delta_std"] > 1e-12 * max(1.0, float(np.abs(diff).max())):
        out["p_value"] = paired_t_test(diff)
    return out


def _summary(values: dict) -> tuple[int, float, float]:
    n = len(values)
    arr = np.array(list(values.values()), dtype=float)
    mean = float(arr.mean()) if n else math.nan
    std = float(arr.std(ddof=1)) if n > 1 else math.nan
    return n, mean, std


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
        base = _finite({s: m.get(column, math.nan) for s, m in by_row[spec.baseline_row].items()})
        base_mean = _summary(base)[1]
        paper_column = spec.paper_columns.get(column, "")
        # A column without a paper counterpart (e.g. a head the paper does not have) looks up no paper row.
        paper_base = paper_row(paper, spec.paper_ref(spec.baseline_row, column)) \
            if paper is not None and paper_column else None
        for row in spec.rows:
            ref = spec.paper_ref(row, column)
            values = _finite({s: m.get(column, math.nan) for s, m in by_row[row].items()})
            n, mean, std = _summary(values)
            line = {"row": row, "paper_row": ref, "column": column, "paper_column": paper_column,
                    "n": n, "mean": mean, "std": std}
            if row == spec.baseline_row:
                line.update(delta=0.0 if n else math.nan, delta_std=math.nan, n_paired=n, p_value=math.nan,
                            mdd=math.nan)
            else:
                line.update(delta=mean - base_mean, **_paired(values, base, spec.alpha, spec.mdd_power))
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


# --- rendering

def simulation_label(conventions: Mapping[str, object] | None) -> str:
    """SIMULATION_LABEL when the conventions say the data, teacher or masks are simulated, else ""."""
    conventions = conventions or {}
    if "simulation" in conventions:
        return SIMULATION_LABEL if conventions["simulation"] else ""
    text = " ".join(str(conventions.get(k, "")) for k in ("dataset", "teacher", "masks")).lower()
    return SIMULATION_LABEL if ("synthetic" in text or "simulat" in text) else ""


def _fmt(x: float, digits: int, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _mdd_text(mdd: float, power: float, digits: int) -> str:
    """The MDD as a Δ cell shows it: '(±m)' for the confidence-interval half-width, '(MDD m)' at other powers."""
    if not math.isfinite(mdd):
        return ""
    return f" (±{_fmt(mdd, digits)})" if power == 0.5 else f" (MDD {_fmt(mdd, digits)})"


def _cells(line: Mapping, is_base: bool, digits: int, spec: TableSpec) -> tuple[str, str, str]:
    """(ours, delta, paper) cell texts of one (row, column) line."""
    n = int(line["n"])
    ours = "–" if n == 0 else _fmt(line["mean"], digits) if n == 1 else \
        f"{_fmt(line['mean'], digits)} ± {_fmt(line['std'], digits)} ({n})"
    if is_base:
        delta = "base"
    elif math.isfinite(line["delta"]):
        marker = "*" if math.isfinite(line["p_value"]) and line["p_value"] < spec.alpha else ""
        delta = _fmt(line["delta"], digits, sign=True) + marker + _mdd_text(line["mdd"], spec.mdd_power, digits)
    else:
        delta = _fmt(line["delta"], digits, sign=True)
    paper = _fmt(line["paper"], digits)
    if not is_base and math.isfinite(line["paper"]) and math.isfinite(line["paper_delta"]):
        paper += f" ({_fmt(line['paper_delta'], digits, sign=True)})"
    return ours, delta, paper


def _grid(table: pd.DataFrame, spec: TableSpec, digits: int) -> tuple[list[str], list[list[str]]]:
    """Header and body of the wide view: per column, ours | delta | paper (delta)."""
    with_paper = bool(spec.paper_table)
    show_ref = with_paper and any(ref != row for row, ref in spec.rows.items())
    header = ["row"] + (["paper row"] if show_ref else [])
    for column in spec.columns:
        header += [column, "Δ"] + ([f"paper {spec.paper_columns.get(column, '')} (Δ)"] if with_paper else [])
    index = {(r.row, r.column): r._asdict() for r in table.itertuples(index=False)}
    body = []
    for row, ref in spec.rows.items():
        cells = [row] + ([ref or "–"] if show_ref else [])
        for column in spec.columns:
            ours, delta, paper = _cells(index[(row, column)], row == spec.baseline_row, digits, spec)
            cells += [ours, delta] + ([paper] if with_paper else [])
        body.append(cells)
    return header, body


def mdd_legend(alpha: float, power: float) -> str:
    """The legend sentence that says which minimal detectable difference the Δ cells show."""
    level = f"{100 * (1 - alpha):g} %"
    t = f"t(1−{alpha:g}/2, n−1)"
    if power == 0.5:
        return (f"(±m): minimal detectable difference at p < {alpha:g} with the seeds run, m = {t} · s_d / √n over "
                f"the n paired seeds, s_d the std of the paired differences: the half-width of the {level} "
                f"confidence interval of the mean difference, so an observed |Δ| below m could not have been "
                f"called significant (and a true difference of m is detected only about half the time); "
                f"±0.0 where every seed moved by the same amount; no value with fewer than 2 pairs.")
    return (f"(MDD m): minimal detectable difference at p < {alpha:g} and {100 * power:g} % power with the seeds "
            f"run, m = ({t} + t({power:g}, n−1)) · s_d / √n over the n paired seeds, s_d the std of the paired "
            f"differences: a true difference of m would reach p < {alpha:g} in about {100 * power:g} % of "
            f"repetitions of this design; 0.0 where every seed moved by the same amount; no value with fewer "
            f"than 2 pairs.")


def _footer(spec: TableSpec, conventions: Mapping[str, object]) -> dict[str, list[str]]:
    alpha = spec.alpha
    legend = (f"Cells: mean ± std over seeds (n = seeds with a finite value); one seed shows its value. "
              f"Δ: difference of means to the baseline row '{spec.baseline_row}'; * p < {alpha:g}, two-sided "
              f"paired t-test across seeds (scipy.stats.ttest_rel over seeds present in both rows; no test "
              f"with fewer than 2 pairs or zero variance of the differences; not corrected for multiple comparisons). "
              + mdd_legend(alpha, spec.mdd_power))
    if spec.paper_table:
        legend += (f" paper (Δ): the paper's {spec.paper_table} value of the row's counterpart and its "
                   f"difference to the counterpart of '{spec.baseline_row}'; paper columns: "
                   + ", ".join(f"{ours} → {theirs}" for ours, theirs in spec.paper_columns.items()) + ". –: no value")
    keys = list(CONVENTION_KEYS) + [k for k in conventions if k not in CONVENTION_KEYS and k != "simulation"]
    lines = [f"{k}: {conventions[k] if k in conventions else 'not stated'}" for k in keys]
    return {"Legend": [legend], "Conventions": lines, "Notes": list(spec.notes)}


def _title(spec: TableSpec, conventions: Mapping[str, object]) -> str:
    label = simulation_label(conventions)
    return f"{spec.name} — {label}" if label else spec.name


def to_markdown(table: pd.DataFrame, spec: TableSpec, conventions: Mapping[str, object], digits: int = 1) -> str:
    """A Markdown table (one line per row) with its legend, conventions and ``spec.notes`` under it.

    Significance and the minimal detectable difference follow ``spec.alpha`` and ``spec.mdd_power``.
    """
    header, body = _grid(table, spec, digits)
    lead = len(header) - (3 if spec.paper_table else 2) * len(spec.columns)
    out = [f"### {_title(spec, conventions)}", "", "| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < lead else "--:" for i in range(len(header))) + "|"]
    # Escaped so a cell's '*' (significance) or '|' never reads as Markdown syntax.
    out += ["| " + " | ".join(c.replace("|", "\\|").replace("*", "\\*") for c in cells) + " |" for cells in body]
    for heading, lines in _footer(spec, conventions).items():
        if lines:
            out += ["", f"**{heading}.**"] + [f"- {line}" for line in lines]
    return "\n".join(out) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "±": r"$\pm$", "Δ": r"$\Delta$", "–": "--", "—": "---", "×": r"$\times$", "≤": r"$\leq$",
          "≥": r"$\geq$", "→": r"$\rightarrow$", "<": r"$<$", ">": r"$>$", "·": r"$\cdot$", "√": r"$\surd$",
          "−": r"$-$"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX))


def latex_escape(text: str) -> str:
    """``text`` safe in LaTeX text mode (specials escaped, ±/Δ/dashes as LaTeX)."""
    return _LATEX_RE.sub(lambda m: _LATEX[m.group()], str(text))


def to_latex(table: pd.DataFrame, spec: TableSpec, conventions: Mapping[str, object], digits: int = 1) -> str:
    """A booktabs ``tabular`` (metric headers spanning ours/Δ/paper) followed by a footnote-size legend."""
    header, body = _grid(table, spec, digits)
    per = 3 if spec.paper_table else 2
    lead = len(header) - per * len(spec.columns)
    out = [r"\begin{tabular}{" + "l" * lead + " ".join(["r" * per] * len(spec.columns)) + "}", r"\toprule"]
    spans = [rf"\multicolumn{{{per}}}{{c}}{{{latex_escape(c)}}}" for c in spec.columns]
    out.append(" & ".join([""] * lead + spans) + r" \\")
    out.append(" ".join(rf"\cmidrule(lr){{{lead + 1 + i * per}-{lead + (i + 1) * per}}}" for i in range(len(spec.columns))))
    sub = ["ours", "Δ"] + (["paper (Δ)"] if spec.paper_table else [])
    out.append(" & ".join([latex_escape(h) for h in header[:lead]] + [latex_escape(s) for s in sub] * len(spec.columns)) + r" \\")
    out.append(r"\midrule")
    # A true minus sign for negative numbers; a hyphen would set "-2.2" too short.
    out += [" & ".join(re.sub(r"(?<![\w.])-(?=\d)", r"$-$", latex_escape(c)) for c in cells) + r" \\" for cells in body]
    out += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"{\footnotesize", latex_escape(_title(spec, conventions)) + r".\par"]
    for heading, lines in _footer(spec, conventions).items():
        if lines:
            text = "; ".join(latex_escape(line.rstrip(".")) for line in lines)
            out.append(rf"\textbf{{{heading}.}} {text}.\par")
    out.append("}")
    return "\n".join(out) + "\n"


def to_csv(table: pd.DataFrame, spec: TableSpec | None = None, conventions: Mapping[str, object] | None = None) -> str:
    """The long table as CSV at full precision (data only; legend and conventions are in .md/.tex)."""
    return table.to_csv(index=False)


def write_table(folder: str | os.PathLike, table: pd.DataFrame, spec: TableSpec,
                conventions: Mapping[str, object]) -> list[pathlib.Path]:
    """Write ``<name>.csv``, ``<name>.md`` and ``<name>.tex`` atomically into ``folder``; return the paths."""
    folder = pathlib.Path(folder)
    return [atomic_write_text(folder / f"{spec.name}.csv", to_csv(table, spec, conventions)),
            atomic_write_text(folder / f"{spec.name}.md", to_markdown(table, spec, conventions)),
            atomic_write_text(folder / f"{spec.name}.tex", to_latex(table, spec, conventions))]
