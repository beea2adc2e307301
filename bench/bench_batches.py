"""CPU benchmark: how much of a padded batch is real tokens, with and without length bucketing (DESIGN §2.7).

A batch pads every prompt to its longest prompt and every program to its longest program (T5: the
encoder's ``input_ids`` [B, S] and the decoder's ``labels`` [B, T]; a causal LM: ``[prompt ;
program[:-1]]``, the same S + T per row). The **real-token fraction** of a set of batches is

    prompt+program   Σ (prompt + program tokens) / Σ B·(S_max + T_max)     over every micro-batch
    program          Σ program tokens / Σ B·T_max                          (the decoder's share)

This script measures it for the micro-batches that the training stages really build — the real
samplers (``train/samplers.py``) cut by the real ``split_micro`` into rank r's micro-batch j, for
every rank, over ``--steps`` optimiser steps — in each ``length_bucketing`` mode (off: the order
before bucketing; micro; window with the default ``bucket_window``), and prints each as a ratio
against off in the same run; then the window sweep behind the default ``bucket_window``; then the
batches of ``bcoder annotate`` and ``bcoder rank`` (their own (problem, length) windows). Two
length distributions:

    builtin   the built-in benchmark (generated in a temp dir, 1000 training problems, the demo's
              1,024-token BPE trained on them, ``max_target_tokens`` 160: configs/demo.yaml).
              Ground truth: the reference solutions (sft's pairs). Generated programs (phi, theta,
              annotate; 4 per problem, the demo's ``train_sampling``; rank: 8, its
              ``test_sampling``): a reference of the same problem, its length scaled by a
              log-normal factor (σ 0.25) and clipped to [3, 160] — the demo's sampled programs
              resemble the references.
    apps      APPS-length programs: the five APPS problems of tests/fixtures/apps tokenised with the
              CodeT5 tokenizer (prompts ≤ 600 tokens, programs ≤ 512, longer ones dropped as sft and
              annotate drop them). Each synthetic problem copies one of the five: its prompt length
              and its reference solutions' lengths (ground truth), and 20 generated programs
              (configs/apps.yaml ``train_sampling``; rank: 256) whose lengths are the copied
              problem's solution lengths scaled as above, clipped to [3, 512].

Batch shapes (programs per micro-batch x accumulation x ranks) are the presets': builtin sft, phi
and theta 8 x 4 x 1 (configs/demo.yaml; 32 x 1 x 1, the demo's shape before, as an extra row);
apps phi 16 x 4 x 4 (phi-apps), theta 16 x 1 x 8
(theta-apps; sft the same shape), theta 4 x 4 x 8 (the 7B LoRA preset) and theta on one GPU
16 x 1 x 1 (not a preset), ρ_real 0.5. A padded tensor's size is computed from the lengths (it
is what ``collate`` and ``collate_pairs`` allocate), not by collating.

With one micro-batch per step (W·A = 1) ``micro`` has nothing to regroup, and ``window`` is bounded
by ρ_real itself: every batch holds n_real ground-truth and B − n_real generated programs, and on
APPS the two pools' lengths differ (problems with many short reference solutions dominate the
ground truth; every problem has 20 samples), so a batch of long samples must carry ground truth
padded to their length. Pairing the pools' length quantiles, as ``window`` does, minimises that
(Σ max over co-monotone pairs), which leaves about 0.83; more needs token budgets (a step's
programs split into a variable number of micro-batches), not done.

Annotate and rank (their windows of ``window_batches`` batches) are measured in three orders:
``before`` (by problem, then length: what they did), ``problem`` (what a T5 does now: problems
ordered by their median length, so a batch spanning two problems joins similar lengths) and
``length`` (what a causal LM does now: the training stages' 2-D cut); ``prompts/batch`` is the
encoder's work for a T5, which encodes each distinct prompt of a batch once — why a T5 keeps the
problems together.

    python bench/bench_batches.py            # about a minute
    python bench/bench_batches.py --quick    # seconds (what the tests run)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bcoder_core.config import TrainConfig  # noqa: E402
from bcoder_core.train.samplers import EpochSampler, MixedBatchSampler, length_keys  # noqa: E402
from bcoder_core.train.step import split_micro  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "apps" / "train"
MODES = ("off", "micro", "window")
JITTER = 0.25
RHO_REAL = 0.5
TARGET = 0.90


def _default(name: str):
    import dataclasses

    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


DEFAULT_MODE = _default("length_bucketing")
DEFAULT_WINDOW = _default("bucket_window")


@dataclass
class Lengths:
    """Programs as lengths: what a sampler and a padded batch see of a transition store."""

    program: np.ndarray
    prompt: np.ndarray
    is_gt: np.ndarray
    problem: np.ndarray

    def __len__(self) -> int:
        return len(self.program)

    def record_lengths(self) -> np.ndarray:
        return length_keys(self.program, self.prompt)

    def gt_indices(self) -> np.ndarray:
        return np.flatnonzero(self.is_gt)

    def generated_indices(self) -> np.ndarray:
        return np.flatnonzero(~self.is_gt)

    def gt_only(self) -> Lengths:
        m = self.is_gt
        return Lengths(self.program[m], self.prompt[m], self.is_gt[m], self.problem[m])


@dataclass
class Source:
    """A length distribution: per problem a prompt length and its reference solutions' lengths."""

    name: str
    prompts: list[int]
    solutions: list[list[int]]
    max_target: int
    train_samples: int
    rank_samples: int

    def programs(self, samples: int, seed: int = 0) -> Lengths:
        """Ground truth (the references) and ``samples`` generated programs per problem."""
        rng = np.random.default_rng(seed)
        prog, prompt, gt, problem = [], [], [], []
        for p, (q, sols) in enumerate(zip(self.prompts, self.solutions, strict=True)):
            if not sols:
                continue
            prog += sols
            gt += [True] * len(sols)
            drawn = rng.choice(sols, size=samples) * rng.lognormal(0.0, JITTER, size=samples)
            prog += np.clip(np.rint(drawn), 3, self.max_target).astype(int).tolist()
            gt += [False] * samples
            prompt += [q] * (len(sols) + samples)
            problem += [p] * (len(sols) + samples)
        return Lengths(
            np.array(prog, dtype=np.int64), np.array(prompt, dtype=np.int64),
            np.array(gt, dtype=bool), np.array(problem, dtype=np.int64),
        )  # fmt: skip


def builtin_source(n_train: int) -> Source:
    """The built-in benchmark, tokenised as the demo's sft does (its trained 1,024-token BPE)."""
    from bcoder_core.benchmark import BenchmarkConfig, write_benchmark
    from bcoder_core.config import SFTConfig
    from bcoder_core.data.apps import load_apps
    from bcoder_core.train.sft import _train_tokenizer, build_pairs

    with tempfile.TemporaryDirectory() as tmp:
        write_benchmark(BenchmarkConfig(seed=0, n_train=n_train, n_test=0), tmp)
        problems = load_apps(Path(tmp) / "train", name="bcoder-bench").problems
    cfg = SFTConfig(output="unused", problems="unused", max_target_tokens=160)
    tokenizer = _train_tokenizer(problems, 1024, cfg)
    prompts, solutions = [], []
    for problem in problems:
        pairs, _ = build_pairs([problem], tokenizer, cfg)
        prompts.append(len(pairs[0].prompt_ids) if pairs else 0)
        solutions.append([len(p.program_ids) for p in pairs])
    return Source("builtin", prompts, solutions, 160, train_samples=4, rank_samples=8)


def apps_source(n_problems: int, seed: int = 0) -> Source:
    """Synthetic problems of the five APPS fixtures' lengths (CodeT5 tokenizer, 600 / 512 limits)."""
    from bcoder_core.config import SFTConfig
    from bcoder_core.data.apps import load_apps
    from bcoder_core.model.tokenizer import load_tokenizer
    from bcoder_core.train.sft import build_pairs

    problems = load_apps(FIXTURES, name="apps").problems
    tokenizer = load_tokenizer("codet5")
    cfg = SFTConfig(output="unused", problems="unused", max_source_tokens=600, max_target_tokens=512)
    templates = []
    for problem in problems:
        pairs, _ = build_pairs([problem], tokenizer, cfg)
        templates.append((len(pairs[0].prompt_ids), [len(p.program_ids) for p in pairs]))
    pick = np.random.default_rng(seed).integers(len(templates), size=n_problems)
    return Source(
        "apps", [templates[t][0] for t in pick], [list(templates[t][1]) for t in pick], 512,
        train_samples=20, rank_samples=256,
    )  # fmt: skip


class Tally:
    """Real and padded token counts of a set of batches."""

    def __init__(self) -> None:
        self.real = self.padded = self.real_program = self.padded_program = 0

    def add(self, program: np.ndarray, prompt: np.ndarray) -> None:
        n = len(program)
        self.real += int(program.sum() + prompt.sum())
        self.padded += n * int(program.max() + prompt.max())
        self.real_program += int(program.sum())
        self.padded_program += n * int(program.max())

    @property
    def both(self) -> float:
        return self.real / self.padded

    @property
    def program(self) -> float:
        return self.real_program / self.padded_program


@dataclass(frozen=True)
class Shape:
    stage: str
    batch_size: int
    grad_accum: int
    world_size: int
    preset: bool = True
    """A preset's shape (the target applies); False: one micro-batch per step on one GPU, where
    ρ_real must hold within the single micro-batch (see the module docstring)."""

    @property
    def label(self) -> str:
        return f"{self.batch_size} x {self.grad_accum} x {self.world_size}"


def training_tally(data: Lengths, shape: Shape, mode: str, window: int, steps: int) -> Tally:
    """The micro-batches of ``steps`` optimiser steps of every rank, as the loaders cut them."""
    global_batch = shape.batch_size * shape.grad_accum * shape.world_size
    kw = dict(grad_accum=shape.grad_accum, bucketing=mode, bucket_window=window)
    if shape.stage == "sft":
        data = data.gt_only()
        samplers = [
            EpochSampler(len(data), global_batch, 0, r, shape.world_size, lengths=data.record_lengths(), **kw)
            for r in range(shape.world_size)
        ]
    else:
        samplers = [
            MixedBatchSampler(data, global_batch, RHO_REAL, 0, rank=r, world_size=shape.world_size, **kw)
            for r in range(shape.world_size)
        ]
    tally = Tally()
    for step in range(steps):
        for sampler in samplers:
            for part in split_micro(sampler.batch(step), shape.grad_accum):
                idx = np.asarray(part)
                tally.add(data.program[idx], data.prompt[idx])
    return tally


def _previous_order(problems, programs, prompts, batch_size, by) -> list[int]:
    """Annotate's and rank's order before length bucketing: sorted by (problem index, length, position)."""
    return sorted(range(len(problems)), key=lambda n: (problems[n], programs[n], n))


def pass_tally(
    data: Lengths, order: np.ndarray, batch_size: int, window_batches: int, by: str
) -> tuple[Tally, float]:
    """The batches of a teacher-forced pass over ``order`` (annotate, rank) in windows of
    ``batch_size × window_batches``, batched in the order ``by`` (``annotate.batch_positions``;
    ``before``: the previous order), and the mean distinct prompts per batch (a T5 encodes each once)."""
    from bcoder_core.rl.annotate import batch_positions

    positions = _previous_order if by == "before" else batch_positions
    size = batch_size * window_batches
    tally, prompts, batches = Tally(), 0, 0
    for w0 in range(0, len(order), size):
        window = order[w0 : w0 + size]
        problem, program, prompt = (x[window].tolist() for x in (data.problem, data.program, data.prompt))
        ordered = window[np.asarray(positions(problem, program, prompt, batch_size, by), dtype=np.int64)]
        for b0 in range(0, len(ordered), batch_size):
            idx = ordered[b0 : b0 + batch_size]
            tally.add(data.program[idx], data.prompt[idx])
            prompts += len(set(data.problem[idx].tolist()))
            batches += 1
    return tally, prompts / batches


def _row(cells: Sequence[object], widths: Sequence[int]) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    rows = [header, *rows]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for r in rows:
        print(_row(r, widths))


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data and few steps (seconds)")
    ap.add_argument("--steps", type=int, default=0, help="optimiser steps per measurement (0: 256, quick 32)")
    args = ap.parse_args(argv)
    quick = args.quick
    steps = args.steps or (32 if quick else 256)
    sources = [builtin_source(150 if quick else 1000), apps_source(60 if quick else 1000)]
    shapes = {
        # the demo's shapes (configs/demo.yaml: 8 programs x 4 micro-batches), and 32 x 1 (before)
        "builtin": [
            Shape("sft", 8, 4, 1), Shape("phi", 8, 4, 1), Shape("theta", 8, 4, 1),
            Shape("theta", 32, 1, 1, preset=False),
        ],
        "apps": [
            Shape("sft", 16, 1, 8), Shape("phi", 16, 4, 4), Shape("theta", 16, 1, 8),
            Shape("theta", 4, 4, 8), Shape("theta", 16, 1, 1, preset=False),
        ],
    }  # fmt: skip
    window = 8 if quick else DEFAULT_WINDOW
    print(
        f"real-token fraction of training micro-batches, {steps} steps, rho_real {RHO_REAL}; default "
        f"length_bucketing {DEFAULT_MODE}, bucket_window {DEFAULT_WINDOW}"
        + (f" (quick: window {window})" if quick else "")
    )
    results: dict[str, float] = {}
    rows = []
    datasets = {s.name: s.programs(s.train_samples) for s in sources}
    for source in sources:
        data = datasets[source.name]
        for shape in shapes[source.name]:
            base = None
            for mode in MODES:
                t = training_tally(data, shape, mode, window, steps)
                base = base or t
                key = f"{source.name}/{shape.stage}/{shape.label}/{mode}" + ("" if shape.preset else "/extra")
                results[key] = t.both
                rows.append([
                    source.name, shape.stage, shape.label, mode + (" *" if mode == DEFAULT_MODE else ""),
                    f"{t.both:.3f}", f"{t.program:.3f}", f"{t.both / base.both:.2f}",
                    f"{t.program / base.program:.2f}",
                ])  # fmt: skip
    print_table(
        ["data", "stage", "B x A x W", "mode", "prompt+program", "program", "ratio", "ratio (program)"],
        rows,
    )
    worst = min(v for k, v in results.items() if k.endswith(f"/{DEFAULT_MODE}"))
    extra = min(v for k, v in results.items() if k.endswith(f"/{DEFAULT_MODE}/extra"))
    print(
        f"default ({DEFAULT_MODE}): lowest prompt+program fraction over the presets' shapes {worst:.3f} "
        f"(target >= {TARGET}); one micro-batch per step on APPS lengths: {extra:.3f}"
    )
    results["worst_default"] = worst

    print(f"\nwindow sweep (theta; bucket_window = batches per window), {steps * 2} steps")
    sweep = (2, 8) if quick else (4, 8, 16, 32, 64, 128)
    rows = []
    for source in sources:
        data = datasets[source.name]
        for shape in dict.fromkeys((shapes[source.name][2], shapes[source.name][-1])):
            off = training_tally(data, shape, "off", 1, steps * 2)
            cells = [source.name, shape.label, f"{off.both:.3f}"]
            for w in sweep:
                cells.append(f"{training_tally(data, shape, 'window', w, steps * 2).both:.3f}")
            rows.append(cells)
    print_table(["data", "B x A x W", "off", *(f"w={w}" for w in sweep)], rows)

    print(
        "\nannotate and rank batches (batch_size 16, window_batches 64: their defaults); before: "
        "(problem, length) order; problem: T5's order now; length: a causal LM's order now"
    )
    rows = []
    for source in sources:
        annotated = datasets[source.name]  # ground truth first, then the samples, problem by problem
        ranked = source.programs(source.rank_samples, seed=1)
        if quick:
            ranked = _first_problems(ranked, 8)
        passes = {
            "annotate": (
                annotated,
                np.concatenate([np.flatnonzero(annotated.is_gt), np.flatnonzero(~annotated.is_gt)]),
            ),
            "rank": (ranked, np.flatnonzero(~ranked.is_gt)),
        }
        for stage, (data, order) in passes.items():
            base = None
            for by in ("before", "problem", "length"):
                t, p = pass_tally(data, order, 16, 64, by)
                base = base or t
                results[f"{source.name}/{stage}/{by}"] = t.both
                rows.append([
                    source.name, stage, by, f"{t.both:.3f}", f"{t.program:.3f}",
                    f"{t.both / base.both:.2f}", f"{p:.1f}",
                ])  # fmt: skip
    print_table(["data", "pass", "order", "prompt+program", "program", "ratio", "prompts/batch"], rows)
    return results


def _first_problems(data: Lengths, n: int) -> Lengths:
    m = data.problem < n
    return Lengths(data.program[m], data.prompt[m], data.is_gt[m], data.problem[m])


if __name__ == "__main__":
    main()
