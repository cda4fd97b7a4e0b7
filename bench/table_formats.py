"""A result table as CSV, Markdown and LaTeX, with its legend and the conventions it was made under.

Renders the long table of ``bench.tables.build_table`` one line per row: each cell ``mean ± std (n)``, each
Δ cell ``+d* (±m)`` (``*`` p < alpha, ``(±m)`` the minimal detectable difference), the paper's value and Δ
beside ours; under it the legend, the conventions (``CONVENTION_KEYS``, "not stated" where missing) and
the spec's notes.
"""
from __future__ import annotations

import math
import os
import pathlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from bench.tables import TableSpec
from infra.io import atomic_write_text

if TYPE_CHECKING:  # pandas costs half a second to import; only commands that build tables pay it
    import pandas as pd

# Conventions every table states; a missing one is printed as "not stated" rather than left out.
CONVENTION_KEYS = ("checkpoint", "seeds", "profile", "dataset", "teacher", "masks", "machine", "wall_time")
SIMULATION_LABEL = "synthetic benchmark (simulation)"


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
