"""Wall time of the whole APPS reproduction on 8 x A100-80GB, stage by stage, from measured rates.

    python bench/apps_walltime.py --theta-mfu 0.118 --measured-on h200     # today: one measured number
    python bench/apps_walltime.py --step-json step.json [--sample-json sample.json] [--gpu a100 --gpus 8]

Prints a markdown table (stage, work, GPUs, estimated hours, the rate it comes from) and the
assumptions under it. Nothing is timed here; every number comes from a rate given to it:

- ``--step-json``: what ``bench/gpu_step_bench.py [--sweep] --json`` wrote: per stage and variant
  the training tokens/s of one GPU (``--variant``, default ``base``: the trainer's configuration).
  A stage missing from it (the sweep measures theta only) runs at theta's MFU, said so in its row.
- ``--theta-mfu F --measured-on CARD``: theta's MFU measured elsewhere (the issue's 11.8% on an
  H200 at batch 16 x (600 + 512), CodeT5-large); gpu_step_bench's FLOP formula turns it into step
  time (``step_flops``, imported), and phi runs at the same MFU. Overrides theta of ``--step-json``.
- ``--sample-json``: sampling's generated tokens/s of one GPU, ``{"device": "NVIDIA H200",
  "tokens_per_s": 1234.0}`` (``peak_tflops`` optional). ``bench/bench_sample_rank.py --json`` writes it; without it the
  sampling rows say "unmeasured" and count in no total.

A rate measured on another card (H200, H100) is scaled to ``--gpu`` by the ratio of their dense
bf16 peaks (``gpu_step_bench.PEAKS_TFLOPS``), and the row says "scaled from <card>, assumes the
same MFU". The forward-only passes (annotate, rank) have no bench of their own: their FLOPs
(gpu_step_bench's forward terms) run at theta's training MFU, which the row says.

Counts, and where each comes from (DESIGN = docs/design.md; the paper card is
shared/reference/b-coder-paper-card.txt, outside the repository):

- 5,000 APPS training and 5,000 test problems: the paper card (not in DESIGN).
- phi: 18,000 steps x 256 programs (16 per GPU x accumulation 4 x 4 GPUs): DESIGN §2.4.
- theta: 10,000 steps x 128 programs (16 per GPU x 8 GPUs, no accumulation): DESIGN §2.5; the
  L_ce-only ablation trains the same steps on the same data (DESIGN §2.5, configs/apps.yaml).
- prompts of at most 600 tokens, programs of at most 512 (DESIGN §2.8; configs/train/*-apps.yaml).
- training samples: 20 per training problem (configs/apps.yaml ``train_sampling.num_samples``; not
  in DESIGN nor the paper card); ground truth one tenth of the generated programs (DESIGN §2.7:
  "generated programs outnumber ground truth about 10 to 1 on APPS").
- test samples: m = 256 per problem (DESIGN §2.10, configs/apps.yaml), for each of the three
  methods the pipeline evaluates (checkpoint, B-Coder, the ablation: bcoder_core/pipeline.py), each
  ranked by a teacher-forced pass of θ and φ (DESIGN §2.8).
- no sft stage: APPS starts from the CodeRL checkpoint (DESIGN §1 Stages, configs/apps.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_step_bench import PEAKS_TFLOPS, Shape, shape_of, step_flops

TRAIN_PROBLEMS = 5000  # the paper card
TEST_PROBLEMS = 5000  # the paper card
SRC, TGT = 600, 512  # DESIGN §2.8
TRAIN_SAMPLES = 20  # configs/apps.yaml train_sampling.num_samples
GT_PER_GENERATED = 0.1  # DESIGN §2.7: generated outnumber ground truth ~10 to 1
TEST_SAMPLES = 256  # DESIGN §2.10
TEST_METHODS = 3  # bcoder_core/pipeline.py: ckpt, bcoder, ce-only
PHI_STEPS, PHI_BATCH = 18_000, 256  # DESIGN §2.4
THETA_STEPS, THETA_BATCH = 10_000, 128  # DESIGN §2.5
MICRO_BATCH = 16  # DESIGN §2.4/§2.5: 16 programs per GPU
CARD_MEMORY_GIB = {"A100": 80.0, "H100": 80.0, "H100 PCIE": 80.0, "H200": 141.0}


def card(name: str) -> tuple[str, float]:
    """(PEAKS_TFLOPS key, dense bf16 peak in TFLOP/s) of a card name (``a100``, ``NVIDIA H200`` ...)."""
    upper = name.upper().replace("-", " ").replace("_", " ")
    for key, tflops in PEAKS_TFLOPS:
        if key in upper:
            return key, tflops
    raise SystemExit(f"unknown card {name!r}; known: {', '.join(k for k, _ in PEAKS_TFLOPS)}")


@dataclass
class Rate:
    """One GPU's rate on the target card: training/sampling tokens/s, or an MFU for FLOP counts."""

    tokens_per_s: float | None = None
    mfu: float | None = None
    source: str = "unmeasured"
    notes: list[str] = field(default_factory=list)


@dataclass
class Row:
    stage: str
    work: str
    gpus: int | None
    hours: float | None
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "work": self.work,
            "gpus": self.gpus,
            "hours": self.hours,
            "source": self.source,
        }


SCALE_NOTES: list[str] = []  # one line per card pair scaled, for the notes under the table


def _scaling(measured: str, target: str) -> tuple[float, str]:
    """Factor from ``measured``'s card to ``target``'s and the words that say so."""
    t_key, t_peak = card(target)
    m_key, m_peak = card(measured)
    if m_key == t_key:
        return 1.0, f"measured on {m_key}"
    note = (
        f"{m_key} → {t_key}: rates x {t_peak / m_peak:.3f}, the ratio of dense bf16 peaks "
        f"({t_peak:g} / {m_peak:g} TFLOP/s), i.e. the same MFU on both cards."
    )
    if note not in SCALE_NOTES:
        SCALE_NOTES.append(note)
    return t_peak / m_peak, f"scaled from {m_key}, assumes the same MFU"


def _record(data: dict[str, Any], stage: str, variant: str) -> dict[str, Any] | None:
    stage_results = data.get("results", {}).get(stage)
    if not stage_results:
        return None
    if variant == "best":
        variant = (data.get("best", {}).get(stage) or {}).get("variant", "base")
    r = stage_results.get(variant)
    if r is None or "skipped" in r:
        raise SystemExit(f"{stage}: variant {variant!r} not measured in the step JSON ({r and r['skipped']})")
    return r


def training_rates(
    args: argparse.Namespace, sh: Shape, target: str
) -> tuple[dict[str, Rate], float | None, str | None]:
    """Per-stage training rates on ``target`` and theta's MFU (with where it comes from)."""
    rates: dict[str, Rate] = {}
    theta_mfu: float | None = None
    theta_how = ""  # how theta's rate got to the target card (the derived rows repeat it)
    target_key = card(target)[0]
    if args.step_json:
        data = json.loads(Path(args.step_json).read_text())
        for stage in ("phi", "theta"):
            r = _record(data, stage, args.variant)
            if r is None:
                continue
            device = r.get("device") or data.get("device")
            if device is None or device == "cpu":
                rates[stage] = Rate(source=f"measured on a CPU ({args.step_json}): no GPU rate to scale")
                continue
            factor, how = _scaling(device, target)
            rate = Rate(
                tokens_per_s=r["tokens_per_s"] * factor,
                mfu=r.get("mfu"),
                source=f"{stage}/{r.get('variant', args.variant)} of {args.step_json}: "
                f"{r['tokens_per_s']:,.0f} tokens/s at batch {r['batch']} × ({r['src']} + {r['tgt']}); {how}",
            )
            if (r["src"], r["tgt"]) != (SRC, TGT):
                rate.notes.append(
                    f"{stage} measured at {r['src']} + {r['tgt']} tokens, applied to {SRC} + {TGT}"
                )
            mem = r.get("peak_gib")
            if mem is not None and mem > CARD_MEMORY_GIB.get(target_key, float("inf")):
                rate.notes.append(
                    f"{stage}: peak memory {mem:.1f} GiB measured, more than the {target_key}'s "
                    f"{CARD_MEMORY_GIB[target_key]:g} GiB: that micro-batch may not fit"
                )
            rates[stage] = rate
            if stage == "theta" and r.get("mfu") is not None:
                theta_mfu, theta_how = r["mfu"], how
    if args.theta_mfu is not None:
        if not args.measured_on:
            raise SystemExit("--theta-mfu needs --measured-on (the card it was measured on)")
        factor, how = _scaling(args.measured_on, target)
        step_s = step_flops("theta", sh, MICRO_BATCH, SRC, TGT) / (args.theta_mfu * card(target)[1] * 1e12)
        theta_mfu, theta_how = args.theta_mfu, how
        source = (
            f"theta MFU {100 * args.theta_mfu:.1f}% given (batch {MICRO_BATCH} × ({SRC} + {TGT})) → "
            f"{step_s:.3f} s per {MICRO_BATCH}-program step; {how}"
        )
        rates["theta"] = Rate(tokens_per_s=MICRO_BATCH * (SRC + TGT) / step_s, mfu=theta_mfu, source=source)
    if "theta" in rates and "phi" not in rates and theta_mfu is not None:
        # phi has no measurement: its own FLOPs (frozen encoder forward, no LM head) at theta's MFU
        step_s = step_flops("phi", sh, MICRO_BATCH, SRC, TGT) / (theta_mfu * card(target)[1] * 1e12)
        rates["phi"] = Rate(
            tokens_per_s=MICRO_BATCH * (SRC + TGT) / step_s,
            mfu=theta_mfu,
            source=f"phi unmeasured: phi's FLOPs at theta's MFU {100 * theta_mfu:.1f}% → "
            f"{step_s:.3f} s per {MICRO_BATCH}-program step; {theta_how}",
        )
    return rates, theta_mfu, theta_how


def sampling_rate(args: argparse.Namespace, target: str) -> Rate:
    if not args.sample_json:
        return Rate(source="unmeasured (no --sample-json)")
    data = json.loads(Path(args.sample_json).read_text())
    if data.get("device", "cpu") == "cpu":
        return Rate(source=f"measured on a CPU ({args.sample_json}): no GPU rate to scale")
    factor, how = _scaling(data["device"], target)
    return Rate(
        tokens_per_s=data["tokens_per_s"] * factor,
        source=f"{args.sample_json}: {data['tokens_per_s']:,.0f} generated tokens/s; {how}",
    )


def forward_flops(sh: Shape, passes: str, programs: float, problems: float) -> float:
    """FLOPs of teacher-forced forward passes (gpu_step_bench's forward terms): the encoder once per
    problem (a T5 batch keeps a problem's programs together, DESIGN §2.7), ``passes`` decoders
    (``"dec"``: no LM head, φ; ``"dec+head"``: checkpoint or θ) per program."""
    f_enc = 2 * sh.n_enc * SRC + 4 * sh.layers_enc * SRC * SRC * sh.d
    f_dec = 2 * sh.n_dec * TGT + 4 * sh.layers_dec * (TGT * TGT + TGT * SRC) * sh.d
    f_head = 2 * sh.d * sh.vocab * TGT
    per_program = sum(f_dec + (f_head if p == "dec+head" else 0) for p in passes.split(","))
    return f_enc * problems + per_program * programs


def _fmt_hours(h: float) -> str:
    return f"{h:.1f}" if h >= 1 else f"{h:.2f}"


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600


def estimate(argv: list[str] | None = None) -> tuple[list[Row], list[str]]:
    """The rows of the table and the notes under it."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--step-json", default=None, help="gpu_step_bench --json output")
    ap.add_argument("--sample-json", default=None, help='{"device": ..., "tokens_per_s": ...} of sampling')
    ap.add_argument("--variant", default="base", help="which sweep variant's rate (base, best, fused ...)")
    ap.add_argument("--gpu", default="a100", help="the card to estimate for (a100, h100, h100-pcie, h200)")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs every stage runs on")
    ap.add_argument("--theta-mfu", type=float, default=None, help="theta's MFU measured elsewhere (0.118)")
    ap.add_argument("--measured-on", default=None, help="the card --theta-mfu was measured on (h200)")
    args = ap.parse_args(argv)
    if not args.step_json and args.theta_mfu is None:
        raise SystemExit("give --step-json or --theta-mfu/--measured-on: nothing to estimate from")

    from bcoder_core.model.build import model_config

    sh = shape_of(model_config("codet5-large"))
    target, g = args.gpu, args.gpus
    peak = card(target)[1] * 1e12
    SCALE_NOTES.clear()
    rates, theta_mfu, theta_how = training_rates(args, sh, target)
    sample = sampling_rate(args, target)
    notes: list[str] = []
    rows: list[Row] = []

    def train_row(stage: str, label: str, steps: int, batch: int, cite: str) -> None:
        rate = rates.get(stage) or Rate(
            source=f"unmeasured ({stage} not measured, no theta MFU to run it at)"
        )
        tokens = steps * batch * (SRC + TGT)
        secs = tokens / (g * rate.tokens_per_s) if rate.tokens_per_s else None
        work = f"{steps:,} steps × {batch} programs × ({SRC} + {TGT}) tokens ({cite})"
        rows.append(Row(label, work, g, _hours(secs), rate.source))
        notes.extend(n for n in rate.notes if n not in notes)

    def sample_row(label: str, programs: int, cite: str) -> None:
        tokens = programs * TGT
        secs = tokens / (g * sample.tokens_per_s) if sample.tokens_per_s else None
        work = f"{programs:,} programs × ≤ {TGT} new tokens ({cite})"
        rows.append(Row(label, work, g, _hours(secs), sample.source))

    def forward_row(label: str, passes: str, programs: float, problems: float, cite: str) -> None:
        secs = None
        if theta_mfu is not None:
            secs = forward_flops(sh, passes, programs, problems) / (g * theta_mfu * peak)
            source = f"forward FLOPs at theta's training MFU {100 * theta_mfu:.1f}% (assumed: no bench); {theta_how}"
        else:
            source = "unmeasured (no theta MFU to apply)"
        rows.append(
            Row(label, f"{programs:,.0f} programs × ({SRC} + {TGT}) tokens ({cite})", g, _hours(secs), source)
        )

    generated = TRAIN_PROBLEMS * TRAIN_SAMPLES
    annotated = generated * (1 + GT_PER_GENERATED)
    tests = TEST_PROBLEMS * TEST_SAMPLES
    rows.append(Row("sft", "not run: APPS starts from the CodeRL checkpoint (DESIGN §1)", None, None, "—"))
    sample_row(
        "sample train", generated, "5,000 problems: paper card; × 20: configs/apps.yaml, not in DESIGN"
    )
    rows.append(
        Row(
            "execute train",
            f"{generated:,} programs",
            None,
            None,
            "CPU (gVisor), not a GPU stage: not estimated",
        )
    )
    forward_row(
        "annotate", "dec+head", annotated, TRAIN_PROBLEMS, "generated + 1/10 ground truth, DESIGN §2.6, §2.7"
    )
    train_row("phi", "train phi", PHI_STEPS, PHI_BATCH, "DESIGN §2.4")
    forward_row("annotate --phi", "dec", annotated, TRAIN_PROBLEMS, "the v_phi column, DESIGN §2.6")
    train_row("theta", "train theta", THETA_STEPS, THETA_BATCH, "DESIGN §2.5")
    train_row("theta", "train theta ablation (L_ce only)", THETA_STEPS, THETA_BATCH, "DESIGN §2.5")
    sample_row(
        "sample test (x3 methods)",
        TEST_METHODS * tests,
        "5,000 problems: paper card; × m = 256: DESIGN §2.10; × 3 methods: pipeline.py",
    )
    forward_row("rank test (x3 methods)", "dec+head,dec", TEST_METHODS * tests, TEST_METHODS * TEST_PROBLEMS,
                "θ + φ teacher-forced, DESIGN §2.8")  # fmt: skip
    rows.append(Row("execute + evaluate test", f"{TEST_METHODS * tests:,} programs", None, None,
                    "CPU (gVisor), not a GPU stage: not estimated"))  # fmt: skip

    notes += [
        f"Every stage runs on {g} x {card(target)[0]} with perfect data-parallel scaling (no communication "
        "or input cost); the paper trained phi on 4 GPUs (DESIGN §2.4): on 4 its hours double.",
        f"Every program is full length ({SRC} prompt + {TGT} program tokens, as the step bench measures): "
        "real APPS programs are shorter and length bucketing (DESIGN §2.7) cuts padding, so training and "
        "forward rows are upper bounds for the rate they use.",
        "Sampling is counted at the most tokens a program may have (max_new_tokens 512), also an upper bound; "
        "sampling is mostly memory-bound, so scaling it by FLOP peaks is rougher than for training.",
        "Not counted: model loading, checkpoints, evaluation of the filtered protocol (m = 1000, DESIGN §2.10), "
        "queueing between stages.",
        *SCALE_NOTES,
    ]
    return rows, notes


def render(rows: list[Row], notes: list[str]) -> str:
    lines = ["| stage | work | GPUs | estimated hours | from what rate |", "|---|---|---|---|---|"]
    for r in rows:
        hours = "—" if r.gpus is None else ("unmeasured" if r.hours is None else _fmt_hours(r.hours))
        lines.append(f"| {r.stage} | {r.work} | {r.gpus or '—'} | {hours} | {r.source} |")
    known = [r.hours for r in rows if r.hours is not None]
    missing = [r.stage for r in rows if r.gpus is not None and r.hours is None]
    total = _fmt_hours(sum(known)) if known else ""
    if missing:  # the total covers only what was measured, and says what it leaves out
        total += (" + " if known else "") + f"unmeasured ({', '.join(missing)})"
    lines.append(f"| **total (GPU stages)** | | | **{total}** | |")
    lines += ["", "Assumptions:", *(f"- {n}" for n in notes)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    rows, notes = estimate(argv)
    print(render(rows, notes))
    return [r.as_dict() for r in rows]


if __name__ == "__main__":
    main()
