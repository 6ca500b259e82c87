"""One self-contained HTML file: inline CSS, images as base64 data URIs, no external request (opens offline).

An inline script sets `document.body.dataset.imagesOk` once the page has loaded ("true" when every image
decoded), which the headless-browser test reads back.
"""

from __future__ import annotations

import base64
import datetime as dt
from html import escape

import pandas as pd

from sweeps.report import best_alpha as B
from sweeps.report import findings as F
from sweeps.report import out_of_domain
from sweeps.report.findings import Findings
from sweeps.report.glance import glance, merges_table, references_by_step
from sweeps.report.questions import QUESTIONS, SOURCES
from sweeps.report.verdicts import EQUIVALENCE_MARGIN

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 2em; }
.sweeps { display: flex; flex-wrap: wrap; gap: 24px; }
.sweep { flex: 1 1 640px; min-width: 0; }
.sweep h3 { color: #345; margin-bottom: 4px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 6px 0; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; } td:first-child, th:first-child { text-align: left; }
.answer { background: #f6f9f6; border-left: 4px solid #5a5; padding: 6px 12px; }
.answer li { margin: 3px 0; } .note { color: #666; font-size: 0.9em; }
.scroll { overflow-x: auto; }
.wrap td { white-space: normal; text-align: left; max-width: 720px; vertical-align: top; }
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesOk = String(imgs.length > 0 && imgs.every(function (i) {
    return i.complete && i.naturalWidth > 0; }));
  document.body.dataset.images = String(imgs.length);
});
"""


def img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def table(frame: pd.DataFrame) -> str:
    if frame is None or frame.empty:
        return ""
    return f'<div class="scroll">{frame.to_html(index=False, escape=True, border=0, na_rep="-")}</div>'


def wrapped(frame: pd.DataFrame) -> str:
    """A table whose long text cells wrap (the answers at a glance)."""
    return f'<div class="wrap">{frame.to_html(index=False, escape=True, border=0, na_rep="-")}</div>'


def answer(lines: list[str]) -> str:
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    return f'<div class="answer"><ul>{items}</ul></div>'


def _hr_table(f: Findings) -> pd.DataFrame:
    d = f.hr_deltas
    if d.empty:
        return d
    return pd.DataFrame(
        {
            "pair": d["pair"],
            F.alpha_label(f.hybrid): d["a"].map("{:.3f}".format),
            "alpha=1": d["b"].map("{:.3f}".format),
            "delta (95% CI)": [x.text() for x in d["diff"]],
        }
    )


def _robust_table(f: Findings) -> pd.DataFrame:
    r = f.robust
    if r.empty:
        return r
    return pd.DataFrame(
        {
            F.ALPHA: r["mono_ratio"].map("{:.2f}".format),
            F.TAU: r["temperature"].map("{:.3g}".format),
            "seeds": r["seeds"],
            "worst pair (most often)": r["config_key"].map(f.worst_pair),
            "worst mAP": [F.ci_text(m, h, n) for m, h, n in zip(r["worst"], r["worst ±"], r["seeds"])],
            "std": [F.ci_text(m, h, n) for m, h, n in zip(r["std"], r["std ±"], r["seeds"])],
            "max - min": [F.ci_text(m, h, n) for m, h, n in zip(r["range"], r["range ±"], r["seeds"])],
        }
    )


def _sweep_block(f: Findings, body: str) -> str:
    return f'<div class="sweep"><h3>{escape(f.sweep.name)}</h3>{body}</div>'


def wall_text(parent_metrics: dict[str, float]) -> str:
    """The sweep's wall time summed over its driver runs (`--resume`s); a sweep recorded before the sum was
    kept logged its last run's time only, and says so."""
    if "sweep/wall_s" not in parent_metrics:
        return "-"
    minutes = f"{parent_metrics['sweep/wall_s'] / 60:.1f}"
    runs = parent_metrics.get("sweep/driver_runs")
    if runs is None:
        return f"{minutes} (the last run only, if it was resumed)"
    return minutes if runs == 1 else f"{minutes} ({int(runs)} runs)"


def encoding_text(sweep) -> str:
    """How the evaluation encoded: fp32 or bf16, and where `eval.precision: auto` decided, its check's words."""
    used = sweep.param("eval_precision/precision", "eval.precision", default="fp32")
    reason = sweep.params.get("eval_precision/reason")
    return f"{used} (auto: {reason})" if reason and reason != "set in eval.precision" else str(used)


def overview(findings: list[Findings]) -> pd.DataFrame:
    rows = []
    for f in findings:
        best = f.best
        rows.append(
            {
                "sweep": f.sweep.name,
                "training languages": len(f.sweep.train_languages),
                "trials": len(f.sweep.runs),
                "configurations": len(f.summary),
                "pruned trials": f.pruned,
                "wall (min, all driver runs)": wall_text(f.sweep.parent_metrics),
                "evaluation": f.selection.source,
                "encoding": encoding_text(f.sweep),
                "best": F.alpha_label(best),
                "objective": f.objective,
                "best value": "-"
                if best is None
                else F.ci_text(best[f.objective], best[f.objective + " ±"], int(best["seeds"])),
            }
        )
    return pd.DataFrame(rows)


# A section of each sweep's block: its findings and figures (`images[sweep name]`) -> HTML.
def _trials(f: Findings, im: dict[str, bytes]) -> str:
    return (
        f'<p class="note">Seed means ± 95% Student-t CI over seeds, grouped by config_key; evaluation: '
        f"{escape(f.selection.source)} on {escape(f.dataset)}; ranked by {escape(f.objective)}. Pruned "
        f"configurations (stopped early by the scheduler) are listed, never compared.</p>" + table(F.trials_table(f))
    )


def _q1(f: Findings, im: dict[str, bytes]) -> str:
    tables = "".join(
        f"<h4>{escape(ds)}{' (held-out)' if ds == f.dataset else ' (out-of-domain, zero-shot)'}: "
        f"best vs references, {escape(SOURCES.get(c.source, c.source))}</h4>{table(c.frame)}"
        for ds, c in f.compare.items()
    )
    return answer(f.answers["q1"]) + _best_alpha(f, im) + img(im.get("alpha_curves"), "metrics vs alpha") + tables


def _best_alpha(f: Findings, im: dict[str, bytes]) -> str:
    if not f.best_alpha:
        return ""
    return (
        f'<h4>Best alpha (95% interval)</h4><p class="note">{escape(B.METHOD)}</p>'
        + table(F.best_alpha_table(f.best_alpha, f.dataset))
        + img(im.get("best_alpha"), "the best alpha per setting, with its interval")
    )


def _q2(f: Findings, im: dict[str, bytes]) -> str:
    return (
        answer(f.answers["q2"])
        + img(im.get("heatmaps"), "L x L heatmaps")
        + img(im.get("hr_deltas"), "high-resource pair deltas")
        + table(_hr_table(f))
    )


def _q3(f: Findings, im: dict[str, bytes]) -> str:
    return answer(f.answers["q3"]) + img(im.get("languages"), "metric vs number of training languages")


def _q4(f: Findings, im: dict[str, bytes]) -> str:
    return answer(f.answers["q4"]) + img(im.get("calibration"), "ECE and reliability")


def _q5(f: Findings, im: dict[str, bytes]) -> str:
    return answer(f.answers["q5"]) + img(im.get("robustness"), "worst pair and spread") + table(_robust_table(f))


def _search(f: Findings, im: dict[str, bytes]) -> str:
    front = f.pareto[f.pareto["front"]] if "front" in f.pareto else f.pareto.iloc[0:0]
    text = (
        (
            "Pareto front (mono mAP vs cross mAP, seed means): "
            + ", ".join(f"{F.alpha_label(r)} ({r['mono/map']:.3f}, {r['cross/map']:.3f})" for _, r in front.iterrows())
        )
        if len(front)
        else "No Pareto front: no completed configuration with mono and cross mAP."
    )
    return (
        answer(
            [
                text,
                "Parameter importances: "
                + (", ".join(f"{k} {v:.2f}" for k, v in f.importance.items()) if f.importance else "none")
                + f" ({f.importance_note}).",
            ]
        )
        + img(im.get("pareto"), "Pareto front")
        + img(im.get("search"), f"importances and {F.ALPHA} x {F.TAU}")
    )


def _out_of_domain(f: Findings, im: dict[str, bytes]) -> str:
    parts = []
    for ood in out_of_domain.analyse(f):
        ds = escape(ood.dataset)
        parts += [
            f"<h4>{ds}: zero-shot retrieval by configuration (full evaluation, 95% CI over seeds)</h4>",
            '<p class="note">Never trained on and never used to select: the in-domain best is judged here '
            "without a winner's curse. The paper's row is another model at another scale (context only).</p>",
            table(ood.by_alpha),
            f"<h4>{ds}: does the in-domain ranking hold?</h4>",
            answer(ood.agreement),
            f"<h4>{ds}: robustness across its language pairs</h4>",
            table(ood.robustness) if len(ood.robustness) else '<p class="note">No pair matrices logged.</p>',
            f"<h4>{ds}: calibration (ECE, lower is better) by configuration</h4>",
            table(ood.calibration),
        ]
        if len(ood.merges):
            parts += [f"<h4>{ds}: the merges of the references against the hybrid</h4>", table(ood.merges)]
    return "".join(parts) or '<p class="note">No zero-shot evaluation of a completed trial.</p>'


def build_html(
    findings: list[Findings], images: dict[str, dict[str, bytes]], compare_png: bytes | None, tracking_uri: str
) -> str:
    """The whole report. `images[sweep name][figure name]` are PNG bytes from `figures.render`."""

    def per_sweep(section) -> str:
        return (
            '<div class="sweeps">'
            + "".join(_sweep_block(f, section(f, images.get(f.sweep.name, {}))) for f in findings)
            + "</div>"
        )

    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    names = ", ".join(f.sweep.name for f in findings)
    parts = [
        f"<h1>Hybrid batch sweep report: {escape(names)}</h1>",
        f'<p class="note">Generated {now} from MLflow {escape(tracking_uri)}. alpha = mono_ratio = P(batch is '
        "monolingual X-X) vs cross-lingual X-Y (arXiv 2408.10536); tau = InfoNCE temperature; T = language-"
        "sampling temperature. Every number carries a 95% Student-t interval over seeds, or says why it cannot."
        "</p>",
        table(overview(findings)),
    ]
    if compare_png:
        parts += ["<h2>Sweeps side by side</h2>", img(compare_png, "sweeps side by side")]
    parts += [
        '<h2 id="answers">Answers at a glance</h2>',
        '<p class="note">Each question\'s deciding comparison: alpha = 0 against alpha = 1 at the same tau (the '
        "references), unless the question names another. A side is better or worse (in the metric's own "
        "direction: higher mAP, lower ECE, rank distance and spread) when the 95% interval of the difference "
        f"over seeds excludes 0; two are equivalent only when that whole interval lies within ±{EQUIVALENCE_MARGIN:g} "
        "(a margin fixed before the studies ran); otherwise they are not separable at this budget. A "
        "comparison whose side was picked as the best on the same held-out data says so: its difference "
        "leans in that side's favour. The sections below hold the detail.</p>",
        per_sweep(lambda f, im: wrapped(glance(f))),
        "<h3>Training length: when do the references part?</h3>",
        '<p class="note">alpha = 0 against alpha = 1 on the objective at every checkpoint, and the best hybrid '
        "(0 < alpha < 1) against each, proxy evaluation (the languages and questions of the sweep's proxy), "
        "paired over seeds.</p>",
        per_sweep(
            lambda f, im: img(im.get("gaps_by_step"), "differences by training step") + table(references_by_step(f))
        ),
        "<h3>Merging the references: weight averages of alpha = 1 and alpha = 0</h3>",
        "<p class=\"note\">Per seed, the two references' final weights averaged, w the alpha = 1 model's share "
        "(sweep.merge_references), set against the best hybrid and each reference on the held-out set (the "
        "full evaluation where all of them have it), paired over seeds.</p>",
        per_sweep(
            lambda f, im: (
                table(merges_table(f))
                if len(f.sweep.merges)
                else '<p class="note">No merges in this sweep: set sweep.merge_references, e.g. [0.25, 0.5, 0.75].</p>'
            )
        ),
    ]
    parts += ["<h2>Trials</h2>", per_sweep(_trials)]
    for key, section in (("q1", _q1), ("q2", _q2), ("q3", _q3), ("q4", _q4), ("q5", _q5)):
        parts += [f'<h2 id="{key}">{escape(QUESTIONS[key])}</h2>', per_sweep(section)]
    if any(f.sweep.zero_shot_datasets for f in findings):
        parts += ['<h2 id="out-of-domain">Out of domain: the zero-shot sets</h2>', per_sweep(_out_of_domain)]
    parts += ["<h2>Search: Pareto front and parameter importances</h2>", per_sweep(_search)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Sweep report: {escape(names)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(parts)
        + f"\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
