"""The pipeline's report: the paper's tables for the built-in benchmark, gains with paired
bootstrap intervals, and PNG plots (training curves, pass@k by method and difficulty).

Inputs are the evaluation reports the `evaluate` stages wrote (``eval/<method>.json``, with
per-problem rows) and the training histories (``<stage>/final/history.json``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def _plot_curves(run_dir: Path, out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {}
    for stage in ("sft", "phi", "theta", "theta-ce"):
        p = run_dir / stage / "final" / "history.json"
        if p.exists():
            histories[stage] = json.loads(p.read_text())
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


def _value_section(run_dir: Path) -> tuple[list[str], dict[str, Any] | None]:
    """Within-problem AUC of V_φ on the replay data: whether L_Q and R̃ have a value signal to use."""
    store_dir = run_dir / "transitions-phi"
    if not (store_dir / "manifest.json").exists():
        return [], None
    from bcoder_core.rl.diagnostics import value_discrimination
    from bcoder_core.rl.transitions import open_store

    r = value_discrimination(open_store(store_dir))
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


def write_report(cfg: Any) -> Report:
    """Write ``<run_dir>/report.md`` (``report-val.md`` when the run evaluates the validation split)
    and its plots from the run's evaluation reports."""
    run_dir = Path(cfg.run_dir)
    split = getattr(cfg, "eval_split", "test")
    suffix = "" if split == "test" else f"-{split}"
    eval_dir = run_dir / f"eval{suffix}"
    reports: dict[str, dict[str, Any]] = {}
    for method in METHOD_NAMES:
        p = eval_dir / f"{method}.json"
        if p.exists():
            reports[method] = json.loads(p.read_text())
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

    curves = _plot_curves(run_dir, run_dir / "training_curves.png")
    passk = _plot_passk(reports, ks, run_dir / f"pass_at_k{suffix}.png")
    timings = (
        json.loads((run_dir / "timings.json").read_text()) if (run_dir / "timings.json").exists() else {}
    )

    ts = cfg.test_sampling
    md = [
        "# B-Coder on the built-in benchmark",
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
    path = run_dir / f"report{suffix}.md"
    path.write_text("\n".join(md))

    summary = ["", "B-Coder on the built-in benchmark — summary", ""]
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
    return Report(markdown_path=path, summary="\n".join(summary), gains=gains)
