"""Write a Report as Markdown, LaTeX (booktabs), CSV and one self-contained HTML page."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from harness.report.plots import Figure
from harness.report.stats import ALPHA, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE
from harness.report.summary import (
    BASELINE,
    DATA_AUDIT,
    KEPT,
    REFERENCE,
    Overlap,
    Report,
    contamination_overlap,
    panel_title,
)

NA = "n/a"
ANYTIME_NOTE = ("Anytime figures: test accuracy at each evaluated epoch against the cost spent so far (data, probe, "
                "static selection and training, per-epoch selection included; evaluation excluded), mean over "
                "seeds per epoch on both axes, shaded 95% bootstrap interval of the accuracy. Runs that did not log "
                "eval_cum_s are left out of them.")


# In the Method section when the summary has any of the data-audit metrics (summary.KEPT, summary.DATA_AUDIT).
DATA_AUDIT_NOTE = (
    "Data audits (docs/data-audits.md), where runs logged them: kept <kind> %: planted rows of that corruption "
    "selected / planted, mean over seeds with its 95% bootstrap interval, as accuracy; dup removal P / R: precision "
    "and recall of removing surplus copies, scored per group of a source and its copies (docs/data-audits.md), means "
    "over seeds, "
    "n/a where a seed's value is undefined (nothing removed); noisy in subset %: rows with a wrong label among the "
    "selected ones; test copies exact / near: test samples with a byte-identical / near (cosine >= audit.threshold) "
    "copy in the training set, means over seeds. ")


def _has_anytime(figures: list[Figure]) -> bool:
    return any(f.png.stem.startswith("anytime_") for f in figures)


def method(report: Report) -> str:
    """How every number of the tables was computed, for the report's Method section."""
    base, ref = report.baseline, report.reference
    panel = " and ".join(report.panel)
    return (
        f"Accuracy: mean over seeds with a {CONFIDENCE:.0%} percentile-bootstrap interval ({BOOTSTRAP_RESAMPLES:,} "
        f"resamples of the seeds, numpy generator seed {BOOTSTRAP_SEED}); n/a with one seed. "
        f"Δ vs {base}: difference of mean accuracy against the {base} runs of the same {panel}, "
        "interval from resampling both groups independently. Costs are means over seeds; total_s is every metered "
        "stage (data, probe, selection, training, evaluation), so selection is never free. "
        f"Speedup = {base}'s mean total_s / this mean total_s; savings = 1 − this cost / {base}'s cost. "
        f"Break-even k* (time; energy where metered) = one-time cost / ({base}'s per-training cost − this "
        "per-training cost), means over seeds: the number of trainings one selection must be reused for to cost "
        f"less than as many {base} trainings; the one-time cost is the probe (a cached probe at its original cost) "
        "and the static selection, the per-training cost is the total minus it (data, training, selection inside "
        f"training, evaluation), {base}'s per-training cost is its whole total; never where this row saves nothing "
        "per training. "
        + (f"Saved over K={report.reuse}: K × ({base} − this) per-training cost − one-time cost, negative when "
           f"it loses; as % of K {base} trainings. " if report.reuse is not None else "")
        + ("probe: the probe's config where it differs between rows (keys without probe.); rows with another "
           "probe are kept apart. " if report.probe_keys else "")
        + (DATA_AUDIT_NOTE if any(c in report.summary for c in (*KEPT, *DATA_AUDIT)) else "") +
        f"vs {ref}: mean over shared seeds of (this − {ref}) accuracy at the same fraction, its bootstrap "
        f"interval and a two-sided exact sign-flip permutation p-value; * marks p < {ALPHA} (reachable from 6 "
        f"paired seeds on). Pareto: no other row of the same {panel} has lower-or-equal mean total_s and "
        "higher-or-equal mean accuracy (one strictly). Values a run did not log are n/a, never 0."
    )


def _isnan(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _pct(v: float, sign: bool = False) -> str:
    return NA if _isnan(v) else f"{v * 100:+.2f}" if sign else f"{v * 100:.2f}"


def _with_ci(v: float, lo: float, hi: float, sign: bool = False) -> str:
    if _isnan(v):
        return NA
    ci = NA if _isnan(lo) else f"{_pct(lo, sign)}, {_pct(hi, sign)}"
    return f"{_pct(v, sign)} [{ci}]"


def _share(v: float) -> str:
    return NA if _isnan(v) else f"{v:.1%}"


def _num(fmt: str) -> Callable[[float], str]:
    return lambda v: NA if _isnan(v) else format(v, fmt)


# Optional columns: shown only when some row of the table has a value (metric name, header, format).
OPTIONAL = [
    ("probe_s", "probe s", _num(".1f")),
    ("selection_s", "selection s", _num(".3g")),
    ("dynamic_selection_s", "in-training selection s", _num(".3g")),  # strategies that select during training
    ("selection_share", "selection share", lambda v: NA if _isnan(v) else f"{v:.1%}"),  # of total s
    ("total_energy_j", "energy J", _num(",.0f")),
    ("gpu_hours", "GPU-h", _num(".3g")),
    ("cpu_core_hours", "CPU core-h", _num(".3g")),
    ("energy_kwh", "kWh", _num(".3g")),
    ("co2e_g", "CO2e g", _num(".3g")),
    ("cost_usd", "USD", _num(".3g")),
    ("tta_s", "time-to-acc. s", _num(".1f")),
    ("savings_energy", "energy saved", lambda v: NA if _isnan(v) else f"{v:.1%}"),
    ("savings_gpu_hours", "GPU-h saved", lambda v: NA if _isnan(v) else f"{v:.1%}"),
]


def _kept(kind: str) -> Callable[[pd.Series], str]:
    m = f"kept_{kind}_fraction"
    return lambda r: _with_ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) if m in r else NA


def _removal(kind: str) -> Callable[[pd.Series], str]:
    def cell(r: pd.Series) -> str:
        p, rc = (r.get(f"{pr}_{kind}_removal", float("nan")) for pr in ("precision", "recall"))
        return NA if _isnan(p) and _isnan(rc) else f"{_num('.2f')(p)} / {_num('.2f')(rc)}"
    return cell


def _audit_counts(r: pd.Series) -> str:
    exact, near = r.get("audit_n_exact", float("nan")), r.get("audit_n_near", float("nan"))
    return NA if _isnan(exact) and _isnan(near) else f"{_num('g')(exact)} / {_num('g')(near)}"


# Data-audit columns (docs/data-audits.md), after Δ: shown only when some row of the table has a value (header, cell).
AUDIT_COLUMNS = [
    ("kept label noise %", _kept("label_noise")),  # planted rows of the kind selected / planted, [95% CI]
    ("kept exact dups %", _kept("exact_duplicates")),
    ("kept near dups %", _kept("near_duplicates")),
    ("kept outliers %", _kept("outliers")),
    ("exact dup removal P / R", _removal("exact_duplicates")),  # precision / recall of removing the surplus copies
    ("near dup removal P / R", _removal("near_duplicates")),
    ("noisy in subset %", lambda r: _pct(r.get("noisy_selected_fraction", float("nan")))),
    ("test copies exact / near", _audit_counts),  # the contamination audit: test samples with a copy in training
]


def _vs_reference(r: pd.Series, reference: str) -> str:
    if r["strategy"] == reference:
        return "(reference)"
    if _isnan(r["vs_reference_diff"]):
        return NA
    mark = " *" if r["vs_reference_significant"] is True else ""
    return (f"{_with_ci(r['vs_reference_diff'], r['vs_reference_lo'], r['vs_reference_hi'], sign=True)} "
            f"p={r['vs_reference_p']:.3f} n={int(r['vs_reference_n'])}{mark}")


def _sort_key(v: object) -> tuple[int, float, str]:
    """Params as logged (strings): numbers in numeric order, then other values, then missing ones."""
    if _isnan(v):
        return 2, 0.0, ""
    try:
        return 0, float(str(v)), ""
    except ValueError:
        return 1, 0.0, str(v)


def _breakeven(r: pd.Series, column: str, baseline: str) -> str:
    if r["strategy"] == baseline:
        return "(baseline)"
    v = r[column] if column in r else float("nan")
    return NA if _isnan(v) else "never" if math.isinf(v) else f"{v:.3g}"


def display_table(s: pd.DataFrame, baseline: str = BASELINE, reference: str = REFERENCE,
                  reuse: int | None = None) -> pd.DataFrame:
    """The human table of one panel: strings, n/a for anything missing. `reuse`: K of the saved-over-K columns."""
    rows = []
    probe = "probe" in s  # rows of one strategy with different probe configs (Report.probe_keys)
    # by the probe's values, not its label: epochs=5 before epochs=20
    order = ["strategy", *(sorted(c for c in s.columns if c.startswith("probe.")) if probe else []), "fraction"]
    for _, r in s.sort_values(order, key=lambda c: c.map(_sort_key) if c.name.startswith("probe.") else c).iterrows():
        row = {
            "strategy": r["strategy"],
            **({"probe": r["probe"]} if probe else {}),
            "fraction": f"{r['fraction']:g}",
            "n": str(int(r["n"])),
            "accuracy % [95% CI]": _with_ci(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"]),
            f"Δ vs {baseline} pp [95% CI]": "(baseline)" if r["strategy"] == baseline else
            _with_ci(r["delta_accuracy"], r["delta_lo"], r["delta_hi"], sign=True),
        }
        row.update({header: cell(r) for header, cell in AUDIT_COLUMNS})
        row["total s"] = _num(".3g")(r["total_s"])
        for metric, header, fmt in OPTIONAL:
            row[header] = fmt(r[metric]) if metric in r else NA
        row["speedup"] = NA if _isnan(r["speedup"]) else f"{r['speedup']:.2f}x"
        row["time saved"] = NA if _isnan(r["savings_time"]) else f"{r['savings_time']:.1%}"
        row["break-even k*"] = _breakeven(r, "breakeven_trainings", baseline)
        row["break-even k* (energy)"] = _breakeven(r, "breakeven_trainings_energy", baseline)
        if reuse is not None:
            row[f"saved over K={reuse} s"] = _num(".3g")(r["reuse_saved_s"])
            row[f"saved over K={reuse}"] = _share(r["reuse_saved_share"])
            row[f"energy saved over K={reuse}"] = _share(r["reuse_saved_energy_share"])
        row[f"vs {reference} pp [95% CI]"] = _vs_reference(r, reference)
        row["Pareto"] = "yes" if r["pareto"] else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    # energy columns only where energy was metered (never "(baseline)" alone either)
    energy = [h for h in table.columns if "energy" in h and h not in {hh for _, hh, _ in OPTIONAL}]
    empty = [h for _, h, _ in OPTIONAL if h in table and (table[h] == NA).all()]
    empty += [h for h, _ in AUDIT_COLUMNS if h in table and (table[h] == NA).all()]
    empty += [h for h in energy if table[h].isin([NA, "(baseline)"]).all()]
    return table.drop(columns=empty)


def overlap_line(o: Overlap) -> str:
    """`test set overlaps training: 3 exact, 5 near copies (audit). ...`: a panel whose runs the audit flagged."""
    def count(span: tuple[float, float]) -> str:
        lo, hi = span
        return NA if _isnan(lo) or _isnan(hi) else f"{lo:g}" if lo == hi else f"{lo:g} to {hi:g}"

    return (f"test set overlaps training: {count(o.n_exact)} exact, {count(o.n_near)} near copies (audit). "
            f"{o.flagged} of {o.audited} audited runs flagged; accuracy on those test samples may measure "
            "memorisation (strategy=decontaminate drops such training samples; docs/data-audits.md).")


def _tables(report: Report) -> list[tuple[str, pd.DataFrame, str]]:
    """(title, display table, contamination flag line or "") per panel."""
    out = []
    for key, g in report.summary.groupby(list(report.panel), dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        overlap = contamination_overlap(report, key)
        out.append((panel_title(report.panel, key), display_table(g, report.baseline, report.reference, report.reuse),
                    overlap_line(overlap) if overlap else ""))
    return out


def _failed_table(report: Report) -> pd.DataFrame:
    f = report.failed.copy()
    f["fraction"] = f["fraction"].map(lambda v: NA if _isnan(v) else f"{v:g}")
    return f.astype(object).where(f.notna(), NA)


# ---- Markdown -----------------------------------------------------------------------------------

def markdown_table(t: pd.DataFrame) -> str:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in t.itertuples(index=False)]
    return "\n".join(lines)


def to_markdown(report: Report, figures: list[Figure]) -> str:
    out = [f"# Report: {report.experiment}", "",
           f"{report.n_runs} runs read; {len(report.failed)} did not finish; "
           f"{len(report.missing)} groups with missing seeds.", ""]
    for title, table, flag in _tables(report):
        out += [f"## {title}", ""] + ([f"> **Contamination:** {flag}", ""] if flag else [])
        out += [markdown_table(table), ""]
    out += ["## Method", "", method(report), ""]
    out += ["## Runs that did not finish", ""]
    out += [markdown_table(_failed_table(report)) if len(report.failed) else "None.", ""]
    out += ["## Missing seeds", ""]
    out += [markdown_table(report.missing.fillna(NA)) if len(report.missing) else "None.", ""]
    if len(report.repeated):
        out += ["## Repeated runs (left out; the latest run of each group and seed is used)", "",
                markdown_table(report.repeated.fillna(NA)), ""]
    out += ["## Figures", ""] + ([ANYTIME_NOTE, ""] if _has_anytime(figures) else [])
    out += [f"![{f.title}]({f.png.name})" for f in figures] + [""]
    return "\n".join(out)


# ---- LaTeX --------------------------------------------------------------------------------------

_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "Δ": r"$\Delta$", "−": "--"}


def latex_escape(text: object) -> str:
    return re.sub("|".join(re.escape(k) for k in _LATEX_ESCAPES), lambda m: _LATEX_ESCAPES[m.group()], str(text))


def latex_table(t: pd.DataFrame, caption: str) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}) inside a table float."""
    spec = "l" + "r" * (len(t.columns) - 1)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small", rf"\caption{{{latex_escape(caption)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in t.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def to_latex(report: Report) -> str:
    head = f"% Winnow report: {report.experiment}. Needs \\usepackage{{booktabs}}.\n"
    tables = [latex_table(t, f"{report.experiment}: {title}" + (f". Contamination: {flag}" if flag else ""))
              for title, t, flag in _tables(report)]
    return head + "\n\n".join(tables) + "\n"


# ---- HTML ---------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border-bottom:1px solid #ccc;padding:3px 8px;
text-align:right}th:first-child,td:first-child{text-align:left}figure{display:inline-block;margin:0 1em 1em 0}
figure svg{width:560px;height:auto}p.method{font-size:13px;color:#444;max-width:1000px}
p.flag{color:#a00;border-left:4px solid #a00;padding-left:8px;max-width:1000px}"""


def _inline_svg(path: Path) -> str:
    svg = path.read_text()
    return svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: invalid inside HTML


def to_html(report: Report, figures: list[Figure]) -> str:
    def table(t: pd.DataFrame) -> str:
        return t.to_html(index=False, na_rep=NA, border=0, escape=True)

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Winnow report: "
             f"{html.escape(report.experiment)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Report: {html.escape(report.experiment)}</h1>",
             f"<p>{report.n_runs} runs read; {len(report.failed)} did not finish; "
             f"{len(report.missing)} groups with missing seeds.</p>"]
    for title, t, flag in _tables(report):
        parts += [f"<h2>{html.escape(title)}</h2>"]
        parts += [f"<p class='flag'><strong>Contamination:</strong> {html.escape(flag)}</p>"] if flag else []
        parts += [table(t)]
    parts += [f"<p class='method'>{html.escape(method(report))}</p>", "<h2>Figures</h2>"]
    parts += [f"<p class='method'>{html.escape(ANYTIME_NOTE)}</p>"] if _has_anytime(figures) else []
    parts += [f"<figure>{_inline_svg(f.svg)}<figcaption>{html.escape(f.title)}</figcaption></figure>"
              for f in figures]
    none = "<p>None.</p>"
    parts += ["<h2>Runs that did not finish</h2>", table(_failed_table(report)) if len(report.failed) else none]
    parts += ["<h2>Missing seeds</h2>", table(report.missing) if len(report.missing) else none]
    if len(report.repeated):
        parts += ["<h2>Repeated runs (left out)</h2>", table(report.repeated)]
    parts.append("</body></html>")
    return "\n".join(parts)


# ---- all files ----------------------------------------------------------------------------------

def write_all(report: Report, figures: list[Figure], out_dir: Path) -> dict[str, Path]:
    """report.md, report.tex, summary.csv (+ failed_runs.csv, missing_seeds.csv) and report.html."""
    paths = {"md": out_dir / "report.md", "tex": out_dir / "report.tex", "csv": out_dir / "summary.csv",
             "html": out_dir / "report.html"}
    paths["md"].write_text(to_markdown(report, figures))
    paths["tex"].write_text(to_latex(report))
    report.summary.to_csv(paths["csv"], index=False, na_rep=NA)
    report.failed.to_csv(out_dir / "failed_runs.csv", index=False, na_rep=NA)
    report.missing.to_csv(out_dir / "missing_seeds.csv", index=False, na_rep=NA)
    paths["html"].write_text(to_html(report, figures))
    return paths
