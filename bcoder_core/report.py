"""The pipeline's report: the paper's tables for the built-in benchmark, gains with paired
bootstrap intervals, and PNG plots (training curves, pass@k by method and difficulty).

Inputs are the evaluation reports the `evaluate` stages wrote (``eval/<method>.json``, with
per-problem rows) and the training histories (``<stage>/final/history.json``), read by URI under the
run prefix: a local run directory, or ``s3://...`` (each fetched and verified through
``bcoder_core.storage``; of a checkpoint only its ``history.json`` is read, not its weights).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcoder_core import storage
from bcoder_core.errors import BcoderError

METHOD_NAMES = {
    "ckpt": "Checkpoint (sft)",
    "bcoder": "B-Coder",
    "ce-only": "Theta with L_ce only",
}


@dataclass(frozen=True)
class Report:
    """Where the report went and the one-screen summary."""

    markdown_path: Path
    summary: str
    gains: dict[str, dict[str, float]]
    """Paired gains by name: ``gain``, ``lo``, ``hi`` (fractions, not points)."""
    pass_at: dict[str, dict[str, float]] = field(default_factory=dict)
    """pass@k₁ over all problems (a fraction) by method, then metric (unranked, ranked, filtered)."""
    value: dict[str, Any] | None = None
    """V_φ's within-problem AUCs on the training samples (``v_last``, ``sum_ckpt_adv``, ...)."""
    k1: int = 1
    """The k of ``pass_at`` and of the gains (the smallest k evaluated)."""


def paired_gain(
    a: list[float], b: list[float], *, resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """Mean of ``a - b`` over problems with a percentile bootstrap interval (same resampled problems)."""
    if len(a) != len(b) or not a:
        raise BcoderError(
            f"paired gain needs two equal, non-empty lists of per-problem values ({len(a)} vs {len(b)})"
        )
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo_i = int((1 - confidence) / 2 * resamples)
    hi_i = min(resamples - 1, int((1 + confidence) / 2 * resamples))
    return {"gain": sum(diffs) / n, "lo": means[lo_i], "hi": means[hi_i], "n": n}


def _per_problem(report: dict[str, Any], metric: str, k: int) -> dict[str, float]:
    key = f"pass@{k}"
    return {r["id"]: float(r[metric][key]) for r in report["per_problem"] if metric in r}


def _aligned(x: dict[str, float], y: dict[str, float]) -> tuple[list[float], list[float]]:
    ids = sorted(set(x) & set(y))
    if len(ids) != len(x) or len(ids) != len(y):
        raise BcoderError("evaluation reports cover different problems; cannot pair them")
    return [x[i] for i in ids], [y[i] for i in ids]


def _cell(group: dict[str, Any], metric: str, k: int) -> str:
    m = group.get(metric, {}).get(f"pass@{k}")
    if m is None:
        return "—"
    lo, hi = m.get("ci", (m["value"], m["value"]))
    return f"{100 * m['value']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _table(
    reports: dict[str, dict[str, Any]], rows: list[tuple[str, str, str]], ks: list[int], title: str
) -> list[str]:
    """Markdown table: one row per (method, metric), columns pass@k per group."""
    first = next(iter(reports.values()))
    groups = first["groups"]
    head = ["method", "ranking"] + [f"{g} pass@{k}" for g in groups for k in ks]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, metric, label in rows:
        rep = reports.get(method)
        if rep is None:
            continue
        cells = [_cell(rep["results"].get(g, {}), metric, k) for g in groups for k in ks]
        lines.append(f"| {METHOD_NAMES.get(method, method)} | {label} | " + " | ".join(cells) + " |")
    counts = [f"{g}: {first['results'][g].get('problems', '?')}" for g in groups if g in first["results"]]
    lines += [
        "",
        f"Problems per group: {', '.join(counts)}. Cells: % with 95% bootstrap CI over problems.",
        "",
    ]
    return lines


def _gain_line(name: str, g: dict[str, float]) -> str:
    excl = "excludes 0" if g["lo"] > 0 or g["hi"] < 0 else "includes 0"
    return f"| {name} | {100 * g['gain']:+.1f} | [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}] | {excl} | {int(g['n'])} |"


def _read_json(uri: str) -> Any | None:
    """The JSON at ``uri`` (a local file, or a committed S3 artifact fetched and verified), or None."""
    if not storage.is_s3(uri):
        p = Path(uri)
        return json.loads(p.read_text()) if p.exists() else None
    return json.loads(storage.input_path(uri).read_text()) if storage.exists(uri) else None


def _member_json(uri: str, rel: str) -> Any | None:
    """The JSON file ``rel`` of the directory artifact at ``uri``, or None; on S3 only that one file
    is read (a checkpoint's weights stay where they are), checked against the manifest's digest."""
    if not storage.is_s3(uri):
        p = Path(uri) / rel
        return json.loads(p.read_text()) if p.exists() else None
    if not storage.exists(uri):
        return None
    entry = next((f for f in storage.read_manifest(uri)["files"] if f["path"] == rel), None)
    data = None if entry is None else storage.backend_for(uri).read_bytes(storage.join(uri, rel))
    if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return None
    return json.loads(data)


def _plot_curves(run_dir: str, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {}
    for stage in ("sft", "phi", "theta", "theta-ce"):
        hist = _member_json(f"{run_dir}/{stage}/final", "history.json")
        if hist is not None:
            histories[stage] = hist
    if not histories:
        return None
    fig, axes = plt.subplots(1, len(histories), figsize=(4.5 * len(histories), 3.6), squeeze=False)
    for ax, (stage, hist) in zip(axes[0], histories.items(), strict=True):
        steps = [h["step"] for h in hist]
        keys = sorted({k for h in hist for k in h if k.startswith(("loss", "q_mean", "v_mean", "adv_mean"))})
        for k in keys:
            ax.plot(steps, [h.get(k, float("nan")) for h in hist], label=k)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_passk(reports: dict[str, dict[str, Any]], ks: list[int], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = next(iter(reports.values()))["groups"]
    bars = [
        (m, metric) for m in reports for metric in ("unranked", "ranked") if metric in reports[m]["metrics"]
    ]
    fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 3.8), squeeze=False)
    width = 0.8 / max(len(bars), 1)
    for ax, k in zip(axes[0], ks, strict=True):
        for i, (m, metric) in enumerate(bars):
            vals, errs = [], [[], []]
            for g in groups:
                cell = reports[m]["results"].get(g, {}).get(metric, {}).get(f"pass@{k}")
                v = 100 * cell["value"] if cell else 0.0
                lo, hi = cell.get("ci", (cell["value"], cell["value"])) if cell else (0.0, 0.0)
                vals.append(v)
                errs[0].append(v - 100 * lo if cell else 0.0)
                errs[1].append(100 * hi - v if cell else 0.0)
            xs = [j + i * width for j in range(len(groups))]
            ax.bar(xs, vals, width, yerr=errs, capsize=2, label=f"{METHOD_NAMES.get(m, m)} ({metric})")
        ax.set_xticks([j + width * (len(bars) - 1) / 2 for j in range(len(groups))], groups)
        ax.set_ylabel(f"pass@{k} (%)")
        ax.set_title(f"pass@{k} by method and difficulty")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _value_section(run_dir: str) -> tuple[list[str], dict[str, Any] | None]:
    """Within-problem AUC of V_φ on the replay data: whether L_Q and R̃ have a value signal to use."""
    from bcoder_core.errors import BcoderError
    from bcoder_core.rl.diagnostics import value_discrimination
    from bcoder_core.rl.transitions import open_store

    try:  # one store or a store of parts (a fanned-out annotate), local or on S3
        store = open_store(f"{run_dir}/transitions-phi")
    except BcoderError:
        return [], None  # not annotated with φ (yet): no section
    r = value_discrimination(store)
    return [
        "## Value model — does V_φ separate the programs of one problem?",
        "",
        f"Within-problem AUC over the {r['generated_programs']} generated training programs "
        f"({r['mixed_problems']} problems with passing and failing ones; 0.5 is chance; "
        "`bcoder value-report`):",
        "",
        "| score | AUC |",
        "|---|---|",
        f"| V_φ at the last state | {r['v_last']:.3f} |",
        f"| mean V_φ over the program | {r['v_mean']:.3f} |",
        f"| Σ A_ckpt (the checkpoint's likelihood-like score, for comparison) | {r['sum_ckpt_adv']:.3f} |",
        "",
        "L_Q and R̃ add to L_ce and likelihood ranking only what V knows beyond Σ A_ckpt.",
        "",
    ], r


def report_name(cfg: Any) -> str:
    """``report`` (``report-val`` for the validation split): the report's file stem, and on S3 the
    directory artifact under the run prefix that holds it and its plots."""
    split = getattr(cfg, "eval_split", "test")
    return "report" if split == "test" else f"report-{split}"


def write_report(cfg: Any, out_dir: Path | None = None) -> Report:
    """Write ``report.md`` (``report-val.md`` when the run evaluates the validation split) and its
    plots from the run's evaluation reports into ``out_dir`` (default: the local run directory)."""
    run_dir = str(cfg.run_dir).rstrip("/")
    if out_dir is None:
        if storage.is_s3(run_dir):
            raise BcoderError(f"{run_dir}: a report of an S3 run needs a local directory to write to")
        out_dir = Path(run_dir)
    split = getattr(cfg, "eval_split", "test")
    suffix = "" if split == "test" else f"-{split}"
    eval_dir = f"{run_dir}/eval{suffix}"
    reports: dict[str, dict[str, Any]] = {}
    for method in METHOD_NAMES:
        rep = _read_json(f"{eval_dir}/{method}.json")
        if rep is not None:
            reports[method] = rep
    if "ckpt" not in reports or "bcoder" not in reports:
        raise BcoderError(
            f"{eval_dir}: the ckpt and bcoder evaluation reports are missing; run the pipeline first"
        )
    ks = list(reports["ckpt"]["ks"])
    k1 = ks[0]

    pp = {m: {metric: _per_problem(r, metric, k1) for metric in r["metrics"]} for m, r in reports.items()}
    gains: dict[str, dict[str, float]] = {}
    if "ranked" in pp["bcoder"]:
        gains[f"B-Coder ranked − checkpoint unranked, pass@{k1}"] = paired_gain(
            *_aligned(pp["bcoder"]["ranked"], pp["ckpt"]["unranked"])
        )
    if "ranked" in pp["ckpt"]:
        gains[f"checkpoint ranked by R̃ − checkpoint unranked, pass@{k1}"] = paired_gain(
            *_aligned(pp["ckpt"]["ranked"], pp["ckpt"]["unranked"])
        )
    gains[f"B-Coder unranked − checkpoint unranked, pass@{k1}"] = paired_gain(
        *_aligned(pp["bcoder"]["unranked"], pp["ckpt"]["unranked"])
    )
    if "ce-only" in pp and "ranked" in pp["ce-only"] and "ranked" in pp["bcoder"]:
        gains[f"B-Coder ranked − L_ce-only ranked, pass@{k1}"] = paired_gain(
            *_aligned(pp["bcoder"]["ranked"], pp["ce-only"]["ranked"])
        )
        gains[f"B-Coder unranked − L_ce-only unranked, pass@{k1}"] = paired_gain(
            *_aligned(pp["bcoder"]["unranked"], pp["ce-only"]["unranked"])
        )

    curves = _plot_curves(run_dir, out_dir / "training_curves.png")
    passk = _plot_passk(reports, ks, out_dir / f"pass_at_k{suffix}.png")
    timings_text = storage.read_text(storage.join(run_dir, "timings.json"))
    timings = json.loads(timings_text) if timings_text else {}

    ts = cfg.test_sampling
    kind = getattr(getattr(cfg, "dataset", None), "kind", "builtin")
    on = (
        "the built-in benchmark"
        if kind == "builtin"
        else {"apps": "APPS", "mbpp": "MBPP"}.get(kind, "HumanEval")
    )
    md = [
        f"# B-Coder on {on}",
        "",
        f"Run directory `{run_dir}`. {'Test' if split == 'test' else 'Validation'} split sampled with m = {ts.num_samples}, T = {ts.temperature}, "
        f"top-p = {ts.top_p}; ranking by the learned reward R̃ of the trained θ (+φ). Every number is a "
        "percentage with a 95% bootstrap confidence interval over problems.",
        "",
        "## Gains (paired bootstrap over problems)",
        "",
        "| comparison | gain (points) | 95% CI | | problems |",
        "|---|---|---|---|---|",
        *[_gain_line(name, g) for name, g in gains.items()],
        "",
        "## Tables",
        "",
        *_table(
            reports,
            [("ckpt", "unranked", "none"), ("bcoder", "unranked", "none"), ("bcoder", "ranked", "R̃")],
            ks,
            "Table 1 — pass@k, unranked and ranked by R̃",
        ),
        *_table(
            reports,
            [("ckpt", "unranked", "none"), ("ckpt", "ranked", "R̃ of B-Coder")],
            ks,
            "Table 3 — R̃ ranking applied to the checkpoint's own samples",
        ),
        *_table(
            reports,
            [("ckpt", "unranked", "none"), ("bcoder", "unranked", "none")],
            ks,
            "Table 8 — unranked B-Coder against the checkpoint",
        ),
    ]
    if "ce-only" in reports:
        md += _table(
            reports,
            [
                ("ce-only", "unranked", "none"),
                ("ce-only", "ranked", "R̃"),
                ("bcoder", "unranked", "none"),
                ("bcoder", "ranked", "R̃"),
            ],
            ks,
            "Ablation — theta stage with L_ce alone, same steps",
        )
    if all("filtered" in r["metrics"] for r in reports.values()):
        md += _table(
            reports,
            [(m, "filtered", "examples, then R̃") for m in reports],
            ks,
            "Filtered protocol — drop samples failing the example tests, then rank",
        )
    value_md, value = _value_section(run_dir)
    md += value_md
    md += ["## Plots", ""]
    if curves:
        md += [f"![training curves]({curves.name})", ""]
    md += [f"![pass@k]({passk.name})", ""]
    if timings:
        md += ["## Stage times (seconds, this invocation and earlier ones)", ""]
        md += ["| stage | seconds |", "|---|---|", *[f"| {k} | {v} |" for k, v in timings.items()], ""]
    path = out_dir / f"report{suffix}.md"
    path.write_text("\n".join(md))

    summary = ["", f"B-Coder on {on} — summary", ""]
    for name, g in gains.items():
        summary.append(f"  {name:<58} {100 * g['gain']:+6.1f}  [{100 * g['lo']:+.1f}, {100 * g['hi']:+.1f}]")
    summary.append("")
    if value is not None:
        summary.append(
            f"  V_phi within-problem AUC on training samples: last state {value['v_last']:.3f}, "
            f"sum A_ckpt {value['sum_ckpt_adv']:.3f} (0.5 = chance)"
        )
        summary.append("")
    for m, r in reports.items():
        allg = r["results"]["all"]
        cells = "  ".join(f"{metric} {_cell(allg, metric, k1)}" for metric in r["metrics"])
        summary.append(f"  {METHOD_NAMES.get(m, m):<24} pass@{k1}: {cells}")
    pass_at = {
        m: {
            metric: r["results"]["all"][metric][f"pass@{k1}"]["value"]
            for metric in r["metrics"]
            if f"pass@{k1}" in r["results"]["all"].get(metric, {})
        }
        for m, r in reports.items()
    }
    return Report(
        markdown_path=path, summary="\n".join(summary), gains=gains, pass_at=pass_at, value=value, k1=k1
    )


def seeds_table(reports: Sequence[Report], labels: Sequence[str]) -> str:
    """A markdown table of the headline numbers of several runs of one setup (seeds): mean ± sample
    standard deviation, range and each run's value, in points (AUCs as they are)."""
    import statistics

    # (name, one value per run, scale, format): gains signed points, pass@k points, AUCs as they are
    rows: list[tuple[str, list[float | None], float, str]] = []
    first = reports[0]
    for name in first.gains:
        rows.append((name, [r.gains.get(name, {}).get("gain") for r in reports], 100.0, "{:+.1f}"))
    for m, metrics in first.pass_at.items():
        for metric in metrics:
            label = f"pass@{first.k1} {METHOD_NAMES.get(m, m)}, {metric}"
            rows.append((label, [r.pass_at.get(m, {}).get(metric) for r in reports], 100.0, "{:.1f}"))
    if first.value is not None:
        for key, what in (("v_last", "V_φ within-problem AUC, last state"), ("sum_ckpt_adv", "Σ A_ckpt AUC")):
            rows.append((what, [r.value.get(key) if r.value else None for r in reports], 1.0, "{:.3f}"))
    head = [
        "| quantity | mean ± sd | range | " + " | ".join(labels) + " |",
        "|---|---|---|" + "---|" * len(labels),
    ]
    lines = []
    for name, vals, scale, fmt in rows:
        # numpy scalars: statistics needs floats; NaN (an AUC with no mixed problem) counts as missing
        vals = [None if v is None or not math.isfinite(float(v)) else float(v) for v in vals]
        xs = [v * scale for v in vals if v is not None]
        if not xs:
            continue
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        mean = fmt.format(statistics.fmean(xs)) + " ± " + fmt.replace("+", "").format(sd)
        rng = f"{fmt.format(min(xs))} … {fmt.format(max(xs))}"
        each = " | ".join("—" if v is None else fmt.format(v * scale) for v in vals)
        lines.append(f"| {name} | {mean} | {rng} | {each} |")
    return "\n".join(head + lines)
