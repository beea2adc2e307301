"""pass@k: unranked, ranked and filtered, per difficulty and overall, with bootstrap CIs (DESIGN §2.8, §2.9).

Inputs are the problem set, the executor's results (DESIGN §3.3), optionally the samples file (for
the expected number of samples per problem, the sample order and the ``score`` used for ranking)
and optionally the results of running the same samples against the *example* tests (filtered
protocol).

Definitions
-----------
* A sample is correct when its result's verdict is ``passed``. A sample without a result is a
  failure, never absent: each problem's expected sample count ``n`` is its number of samples in the
  samples file, else ``n_samples``, else its number of results. A problem of the problem set with
  no result at all counts as unsolved (and is listed in the report).
* **Unranked pass@k** is the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` (``pass_at_k``, the one
  place it is computed). When ``k > n`` all ``n`` samples are the ``k`` tries: 1 if any is correct.
  The report counts the problems where that happened.
* **Sample index**: the integer ``sample_id`` when every sample of the problem has one, else the
  sample's position among that problem's samples in the samples file.
* **Ranked pass@k** (needs a numeric ``score`` on every sample): the k samples with the highest
  score (ties: lower sample index first) are submitted; the problem is solved (1) if any of them is
  correct, else 0.
* **Filtered pass@k** (needs example results): samples that fail the example tests are dropped
  (a sample with no example result is dropped too), except on problems that have no example tests,
  which keep all their samples; the remaining samples are ranked by score when every sample has
  one, else taken in sample-index order; solved if any of the first k is correct.
* Groups: each difficulty label (APPS order first: introductory, interview, competition; then
  others alphabetically; ``unknown`` for none) and ``all``. Each metric is the mean over the
  group's problems, with a percentile bootstrap confidence interval over problems (seeded;
  the same resampled problem sets for every metric of a group, so the intervals are paired).

Values in the JSON report are fractions in [0, 1]; the Markdown report shows percentages.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bcoder_core.config import cli_flags
from bcoder_core.errors import BcoderError, check
from bcoder_core.jsonl import read_keyed
from bcoder_core.problems import Problem, count_tests

DIFFICULTY_ORDER = ("introductory", "interview", "competition")
REPORT_KIND = "bcoder-evaluation"
REPORT_VERSION = 1
COMPARE_KEYS = ("compare", "compare_mode")


# ----------------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021).

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (no large
    binomials). When ``k > n`` every sample is one of the ``k`` tries: ``1.0`` if ``c > 0`` else 0.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"pass_at_k: {name} must be an int, not {value!r}")
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, not {k}")
    if n < 0 or c < 0 or c > n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if c == 0:
        return 0.0
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def top_k_solved(
    correct: Sequence[bool], scores: Sequence[float] | None, index: Sequence[int], k: int
) -> int:
    """1 if any of the top ``k`` samples is correct, else 0.

    Order: highest ``score`` first (when ``scores`` is given), ties and unscored by lower ``index``.
    """
    order = sorted(range(len(correct)), key=lambda i: ((-scores[i]) if scores is not None else 0.0, index[i]))
    return int(any(correct[i] for i in order[:k]))


# --------------------------------------------------------------------------------- the model


@dataclass
class _ProblemEval:
    problem: Problem
    sample_keys: list[str] = field(default_factory=list)  # in sample-index order of the samples file
    index: list[int] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    expected_n: int = 0
    correct: dict[str, bool] = field(default_factory=dict)  # sample key -> passed (results present)
    example_passed: dict[str, bool] = field(default_factory=dict)


def _key(record: Mapping[str, Any], what: str) -> tuple[str, str]:
    pid, sid = record.get("problem_id"), record.get("sample_id")
    if pid is None or sid is None:
        raise BcoderError(f"{what}: a record without problem_id/sample_id: {json.dumps(record)[:120]}")
    return str(pid), str(sid)


def _score(sample: Mapping[str, Any]) -> float | None:
    if "score" not in sample or sample["score"] is None:
        return None
    value = sample["score"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise BcoderError(
            f"samples: score {value!r} of {sample.get('problem_id')}/{sample.get('sample_id')} is not a number"
        )
    return float(value)


def _group_order(labels: Iterable[str]) -> list[str]:
    labels = set(labels)
    known = [d for d in DIFFICULTY_ORDER if d in labels]
    return known + sorted(labels - set(DIFFICULTY_ORDER))


def evaluate(
    problems: Iterable[Problem] | Mapping[str, Problem],
    results: Iterable[Mapping[str, Any]],
    samples: Iterable[Mapping[str, Any]] | None = None,
    ks: Sequence[int] = (1, 5),
    *,
    example_results: Iterable[Mapping[str, Any]] | None = None,
    n_samples: int | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    per_problem: bool = True,
    compare_mode: str | None = None,
) -> dict[str, Any]:
    """The evaluation report (a JSON-able dict; see the module docstring and ``render_markdown``).

    ``compare_mode`` names the executor's output comparison mode when the result records do not
    carry it themselves (the CLI takes it from the results artifact's manifest).
    """
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise BcoderError(f"k values must be positive integers, got {ks}")
    if n_samples is not None and n_samples < 1:
        raise BcoderError(f"--n-samples must be positive, got {n_samples}")
    if bootstrap < 0:
        raise BcoderError(f"bootstrap resamples must be >= 0, got {bootstrap}")
    if not 0 < confidence < 1:
        raise BcoderError(f"confidence must be in (0, 1), got {confidence}")
    plist = list(problems.values()) if isinstance(problems, Mapping) else list(problems)
    if not plist:
        raise BcoderError("no problems to evaluate")
    evals: dict[str, _ProblemEval] = {}
    for p in plist:
        if p.id in evals:
            raise BcoderError(f"problems: duplicate id {p.id!r}")
        evals[p.id] = _ProblemEval(p)

    have_samples = samples is not None
    if example_results is not None and not have_samples:
        raise BcoderError("the filtered protocol (example results) needs the samples file")
    if samples is not None:
        seen: set[tuple[str, str]] = set()
        raw: dict[str, list[tuple[str, Any, float | None]]] = defaultdict(list)
        for s in samples:
            pid, sid = _key(s, "samples")
            if pid not in evals:
                raise BcoderError(f"samples: problem id {pid!r} is not in the problem set")
            if (pid, sid) in seen:
                raise BcoderError(f"samples: duplicate sample {pid}/{sid}")
            seen.add((pid, sid))
            raw[pid].append((sid, s.get("sample_id"), _score(s)))
        for pid, rows in raw.items():
            ev = evals[pid]
            all_int = all(isinstance(r[1], int) and not isinstance(r[1], bool) for r in rows)
            ev.sample_keys = [r[0] for r in rows]
            ev.index = [r[1] for r in rows] if all_int else list(range(len(rows)))
            ev.scores = [r[2] for r in rows]

    compare_modes: Counter[str] = Counter()
    _attach_results(evals, results, have_samples, "results", compare_modes, lambda ev: ev.correct)
    if not compare_modes and compare_mode:
        compare_modes[compare_mode] = sum(len(ev.correct) for ev in evals.values())
    if example_results is not None:
        _attach_results(
            evals, example_results, True, "example results", Counter(), lambda ev: ev.example_passed
        )

    for ev in evals.values():
        if have_samples:
            ev.expected_n = len(ev.sample_keys)
            if not ev.sample_keys and n_samples is not None:
                ev.expected_n = n_samples
        elif n_samples is not None:
            if len(ev.correct) > n_samples:
                raise BcoderError(
                    f"results: {len(ev.correct)} results for {ev.problem.id} but --n-samples is {n_samples}"
                )
            ev.expected_n = n_samples
        else:
            ev.expected_n = len(ev.correct)

    scored = [ev for ev in evals.values() if ev.sample_keys]
    n_scored = sum(1 for ev in scored for s in ev.scores if s is not None)
    n_total = sum(len(ev.scores) for ev in scored)
    if 0 < n_scored < n_total:
        ev = next(ev for ev in scored if any(s is None for s in ev.scores))
        sid = ev.sample_keys[next(i for i, s in enumerate(ev.scores) if s is None)]
        raise BcoderError(
            f"samples: {n_scored} of {n_total} samples have a score; {ev.problem.id}/{sid} has none"
        )
    has_scores = n_total > 0 and n_scored == n_total

    # Per-problem values.
    rows: list[dict[str, Any]] = []
    for ev in evals.values():
        c = sum(1 for v in ev.correct.values() if v)
        n = ev.expected_n
        row: dict[str, Any] = {
            "id": ev.problem.id,
            "difficulty": ev.problem.difficulty or "unknown",
            "n": n,
            "c": c,
            "missing": n - len(ev.correct),
            "unranked": {f"pass@{k}": pass_at_k(n, c, k) for k in ks},
        }
        correct_list = [ev.correct.get(key, False) for key in ev.sample_keys]
        if has_scores:
            scores = [float(s) for s in ev.scores if s is not None]
            row["ranked"] = {f"pass@{k}": top_k_solved(correct_list, scores, ev.index, k) for k in ks}
        if example_results is not None:
            has_examples = count_tests(ev.problem.example_tests) > 0
            keep = [
                i
                for i, key in enumerate(ev.sample_keys)
                if not has_examples or ev.example_passed.get(key, False)
            ]
            kept_correct = [correct_list[i] for i in keep]
            kept_scores = [float(ev.scores[i]) for i in keep] if has_scores else None  # type: ignore[arg-type]
            kept_index = [ev.index[i] for i in keep]
            row["filtered"] = {
                f"pass@{k}": top_k_solved(kept_correct, kept_scores, kept_index, k) for k in ks
            }
            row["filtered_kept"] = len(keep)
            row["has_example_tests"] = has_examples
        rows.append(row)

    metrics = (
        ["unranked"]
        + (["ranked"] if has_scores else [])
        + (["filtered"] if example_results is not None else [])
    )
    groups = _group_order(r["difficulty"] for r in rows)
    group_rows = {g: [r for r in rows if r["difficulty"] == g] for g in groups}
    group_rows["all"] = rows

    report: dict[str, Any] = {
        "kind": REPORT_KIND,
        "version": REPORT_VERSION,
        "ks": ks,
        "metrics": metrics,
        "groups": [*groups, "all"],
        "compare_modes": dict(sorted(compare_modes.items())),
        "ranking": {
            "ranked": "score (ties: lower sample index)" if has_scores else None,
            "filtered": (
                ("score (ties: lower sample index)" if has_scores else "sample index")
                if example_results is not None
                else None
            ),
        },
        "bootstrap": {"resamples": bootstrap, "seed": seed, "confidence": confidence},
        "counts": _counts(rows, ks, example_results is not None),
        "results": {},
        "notes": [],
    }
    for g, grs in group_rows.items():
        if not grs:
            continue
        report["results"][g] = _group_summary(g, grs, metrics, ks, bootstrap, seed, confidence)
    if not has_scores and have_samples:
        report["notes"].append("ranked pass@k not computed: the samples carry no score")
    if not have_samples:
        report["notes"].append("no samples file: ranked and filtered pass@k need one")
    if report["counts"]["problems_without_results"]:
        report["notes"].append(
            f"{report['counts']['problems_without_results']} problem(s) have no results at all and count as unsolved"
        )
    if report["counts"]["missing_results"]:
        report["notes"].append(
            f"{report['counts']['missing_results']} sample(s) without a result count as failures"
        )
    if per_problem:
        report["per_problem"] = rows
    return report


def _attach_results(
    evals: dict[str, _ProblemEval],
    records: Iterable[Mapping[str, Any]],
    need_known_sample: bool,
    what: str,
    compare_modes: Counter[str],
    target,
) -> None:
    known: dict[str, set[str]] = {pid: set(ev.sample_keys) for pid, ev in evals.items()}
    for r in records:
        pid, sid = _key(r, what)
        if pid not in evals:
            raise BcoderError(f"{what}: problem id {pid!r} is not in the problem set")
        if need_known_sample and sid not in known[pid]:
            raise BcoderError(f"{what}: sample {pid}/{sid} is not in the samples file")
        verdict = r.get("verdict")
        if not isinstance(verdict, str):
            raise BcoderError(f"{what}: result {pid}/{sid} has no verdict")
        slot = target(evals[pid])
        if sid in slot:
            raise BcoderError(f"{what}: two results for sample {pid}/{sid}")
        slot[sid] = verdict == "passed"
        for key in COMPARE_KEYS:
            if r.get(key):
                compare_modes[str(r[key])] += 1
                break


def _counts(rows: list[dict[str, Any]], ks: Sequence[int], filtered: bool) -> dict[str, Any]:
    ns = [r["n"] for r in rows]
    counts: dict[str, Any] = {
        "problems": len(rows),
        "samples_expected": sum(ns),
        "samples_per_problem": {"min": min(ns), "max": max(ns), "mean": sum(ns) / len(ns)},
        "missing_results": sum(r["missing"] for r in rows),
        "problems_without_results": sum(1 for r in rows if r["missing"] == r["n"]),
        "problems_with_fewer_samples_than_k": {f"pass@{k}": sum(1 for n in ns if n < k) for k in ks},
    }
    if filtered:
        counts["problems_with_example_tests"] = sum(1 for r in rows if r["has_example_tests"])
        counts["samples_kept_by_filter"] = sum(r["filtered_kept"] for r in rows)
    return counts


def _group_summary(
    group: str,
    rows: list[dict[str, Any]],
    metrics: Sequence[str],
    ks: Sequence[int],
    bootstrap: int,
    seed: int,
    confidence: float,
) -> dict[str, Any]:
    import numpy as np

    n = len(rows)
    out: dict[str, Any] = {"problems": n}
    resample = None
    if bootstrap > 0:
        rng = np.random.default_rng([seed, zlib.crc32(group.encode())])
        resample = rng.integers(0, n, size=(bootstrap, n))
    alpha = (1.0 - confidence) / 2.0
    for metric in metrics:
        values: dict[str, Any] = {}
        for k in ks:
            name = f"pass@{k}"
            vec = np.array([float(r[metric][name]) for r in rows])
            entry: dict[str, Any] = {"value": float(vec.mean())}
            if resample is not None:
                means = vec[resample].mean(axis=1)
                lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
                entry["ci"] = [float(lo), float(hi)]
            values[name] = entry
        out[metric] = values
    return out


# ---------------------------------------------------------------------------------- Markdown

_TITLES = {
    "unranked": "Unranked pass@k (unbiased estimator)",
    "ranked": "Ranked pass@k (top-k by score)",
    "filtered": "Filtered pass@k (drop samples failing the example tests, then rank)",
}


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """A human-readable Markdown version of an ``evaluate`` report."""
    lines: list[str] = ["# Evaluation", ""]
    counts = report["counts"]
    conf = report["bootstrap"]["confidence"]
    lines.append(
        f"- problems: {counts['problems']}; samples expected: {counts['samples_expected']} "
        f"(per problem {counts['samples_per_problem']['min']}–{counts['samples_per_problem']['max']})"
    )
    modes = report.get("compare_modes") or {}
    if modes:
        lines.append(
            "- output comparison mode: " + ", ".join(f"`{m}` ({n} results)" for m, n in modes.items())
        )
    else:
        lines.append("- output comparison mode: not recorded in the results")
    if report["bootstrap"]["resamples"]:
        lines.append(
            f"- values in %; [{round(conf * 100)}% bootstrap CI over problems, "
            f"{report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']}]"
        )
    else:
        lines.append("- values in %")
    for metric in ("ranked", "filtered"):
        how = (report.get("ranking") or {}).get(metric)
        if how and metric in report["metrics"]:
            lines.append(f"- {metric}: ordered by {how}")
    if "filtered" in report["metrics"]:
        lines.append(
            f"- filtered: {counts['problems_with_example_tests']} problem(s) have example tests; "
            f"{counts['samples_kept_by_filter']} sample(s) kept"
        )
    for note in report.get("notes", []):
        lines.append(f"- note: {note}")
    ks = report["ks"]
    for metric in report["metrics"]:
        lines += ["", f"## {_TITLES.get(metric, metric)}", ""]
        lines.append("| group | problems | " + " | ".join(f"pass@{k}" for k in ks) + " |")
        lines.append("|---|---:|" + "---:|" * len(ks))
        for g in report["groups"]:
            res = report["results"].get(g)
            if not res:
                continue
            cells = []
            for k in ks:
                e = res[metric][f"pass@{k}"]
                cell = _pct(e["value"])
                if "ci" in e:
                    cell += f" [{_pct(e['ci'][0])}, {_pct(e['ci'][1])}]"
                cells.append(cell)
            name = f"**{g}**" if g == "all" else g
            lines.append(f"| {name} | {res['problems']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- the command


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig:
    """`bcoder evaluate`: which pass@k values, how many samples, which split, the bootstrap."""

    CLI_FLAGS: ClassVar[dict[str, str]] = cli_flags("n_samples split bootstrap seed")
    """Fields the stage command has a flag for (``--num-samples`` for num_samples ...)."""

    ks: list[int] = field(default_factory=lambda: [1, 5])
    """pass@k values reported."""
    n_samples: int | None = None
    """Expected samples per problem when no samples file is given (None: each problem's result count)."""
    split: str | None = None
    """Evaluate only the problems of this split (None: every problem of the problem set)."""
    bootstrap: int = 1000
    """Bootstrap resamples over problems for the confidence intervals (0: none)."""
    seed: int = 0
    """Seed of the bootstrap."""
    confidence: float = 0.95
    """Confidence level of the intervals."""

    def __post_init__(self) -> None:
        check(
            bool(self.ks) and all(k >= 1 for k in self.ks), "ks", f"must be positive integers (got {self.ks})"
        )
        check(
            self.n_samples is None or self.n_samples >= 1, "n_samples", f"must be >= 1 (got {self.n_samples})"
        )
        check(self.bootstrap >= 0, "bootstrap", f"must be >= 0 (got {self.bootstrap})")
        check(0 < self.confidence < 1, "confidence", f"must lie in (0, 1) (got {self.confidence})")


def parse_ks(text: str) -> list[int]:
    """``"1,5"`` → [1, 5] (the ``--k`` flag)."""
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BcoderError(f"--k {text!r}: expected comma-separated positive integers, e.g. 1,5") from None
    if not ks or any(k < 1 for k in ks):
        raise BcoderError(f"--k {text!r}: expected comma-separated positive integers, e.g. 1,5")
    return ks


def select_split(
    problems: list[Problem], split: str | None, *record_lists: list[dict[str, Any]] | None
) -> tuple[list[Problem], list[list[dict[str, Any]] | None]]:
    """The problems of ``split`` and, of each record list, the records of those problems (None: all)."""
    if split is None:
        return problems, list(record_lists)
    kept = [p for p in problems if p.split == split]
    if not kept:
        raise BcoderError(f"no problems of split {split!r}")
    ids = {p.id for p in kept}
    return kept, [
        None if records is None else [r for r in records if str(r.get("problem_id")) in ids]
        for records in record_lists
    ]


def _check_tests_kind(uri: str, option: str, expected: str) -> dict[str, Any]:
    from bcoder_core import storage

    config = storage.manifest_config(uri) or {}
    if config.get("tests") not in (None, expected):
        raise BcoderError(
            f"{option} {uri}: these results were run on the {config['tests']} tests, not the {expected} tests"
        )
    return config


def run_evaluate(
    problems: str,
    results: str,
    cfg: EvaluateConfig,
    *,
    samples: str | None = None,
    example_results: str | None = None,
    out_json: str | None = None,
    out_md: str | None = None,
) -> str:
    """The ``bcoder evaluate`` stage: writes the JSON and Markdown reports; returns the Markdown."""
    from bcoder_core import storage
    from bcoder_core.problems import read_problems

    for uri in filter(None, (out_json, out_md)):
        storage.check_output(uri, kind="evaluation")  # before any input is read
    results_config = _check_tests_kind(results, "--results", "hidden")
    if example_results:
        _check_tests_kind(example_results, "--example-results", "example")
    problem_list = read_problems(storage.input_path(problems))
    result_records = list(read_keyed(storage.input_path(results), "result"))
    sample_records = list(read_keyed(storage.input_path(samples), "sample")) if samples else None
    example_records = (
        list(read_keyed(storage.input_path(example_results), "example result")) if example_results else None
    )
    try:
        problem_list, (result_records, sample_records, example_records) = select_split(
            problem_list, cfg.split, result_records, sample_records, example_records
        )
    except BcoderError as exc:
        raise BcoderError(f"{problems}: {exc}") from None
    report = evaluate(
        problem_list,
        result_records or [],
        sample_records,
        cfg.ks,
        example_results=example_records,
        n_samples=cfg.n_samples,
        bootstrap=cfg.bootstrap,
        seed=cfg.seed,
        confidence=cfg.confidence,
        compare_mode=results_config.get("compare"),
    )
    report["inputs"] = {
        "problems": problems,
        "results": results,
        "samples": samples,
        "example_results": example_results,
        "split": cfg.split,
    }
    markdown = render_markdown(report)
    for uri, name, text in (
        (out_json, "report.json", json.dumps(report, indent=1) + "\n"),
        (out_md, "report.md", markdown),
    ):
        if uri:
            with storage.output_path(uri, kind="evaluation") as path:
                target = path / name if path.is_dir() else path
                target.write_text(text, encoding="utf-8")
    return markdown
