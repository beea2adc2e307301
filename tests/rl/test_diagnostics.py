"""Within-problem AUC of a value model (bcoder value-report)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bcoder_core.rl.diagnostics import value_discrimination, within_problem_auc
from bcoder_core.rl.transitions import Transition, open_store, write_transitions


def test_auc_is_per_problem_and_ignores_problems_without_both_outcomes():
    rows = [
        ("a", True, 2.0), ("a", False, 1.0), ("a", False, 0.0),  # perfect: 1.0
        ("b", True, 0.0), ("b", False, 1.0),                      # reversed: 0.0
        ("c", True, 5.0), ("c", False, 5.0),                      # tie: 0.5
        ("d", True, 9.0), ("d", True, 1.0),                       # no failing program: skipped
    ]  # fmt: skip
    auc, n = within_problem_auc(rows)
    assert n == 3 and auc == pytest.approx(0.5)
    # A score that only separates problems (easy vs hard) is at chance within each problem.
    between = [
        (p, ok, {"easy": 1.0, "hard": 0.0}[p])
        for p, ok in [("easy", 1), ("easy", 0), ("hard", 1), ("hard", 0)]
    ]
    assert within_problem_auc(between) == (0.5, 2)
    assert np.isnan(within_problem_auc([("x", True, 1.0)])[0])


def _store(path, separating: bool):
    rng = np.random.default_rng(0)
    recs = []
    for p in range(5):
        for s in range(6):
            passed = s % 2 == 0
            n = int(rng.integers(3, 8))
            # raw u = 0 gives V = R_max (passing), |u| = 4 a low V (failing); or noise
            u = np.full(n, 0.0 if passed else 4.0) if separating else rng.normal(0, 2, n)
            recs.append(
                Transition(
                    problem_id=f"p{p}", sample_id=s, prompt_ids=[5, 6], program_ids=rng.integers(5, 50, n),
                    reward=1.0 if passed else -0.3, is_gt=s == 0 and p == 0, ckpt_adv=np.zeros(n),
                    ckpt_greedy=np.zeros(n), v_phi=u.astype(np.float32),
                )
            )  # fmt: skip
    write_transitions(path, recs, shard_size=8)
    return path


def test_value_discrimination_of_a_separating_and_a_random_value(tmp_path):
    good = value_discrimination(open_store(_store(tmp_path / "good", separating=True)))
    assert good["v_last"] == 1.0 and good["v_mean"] == 1.0 and good["generated_programs"] == 29
    assert good["sum_ckpt_adv"] == 0.5  # all zero: ties
    noisy = value_discrimination(open_store(_store(tmp_path / "noisy", separating=False)))
    assert 0.0 < noisy["v_last"] < 1.0 and noisy["mixed_problems"] == 5


def test_cli_value_report(tmp_path):
    store = _store(tmp_path / "s", separating=True)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "value-report", "--transitions", str(store)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "within-problem AUC: V_phi(last state) 1.000" in proc.stdout
