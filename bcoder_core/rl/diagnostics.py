"""Does a value model tell passing programs from failing ones of the same problem?

Ranking (DESIGN §2.8) and the theta stage's L_Q only help where V separates the programs of one
problem; separating easy problems from hard ones is not enough. This module measures that on an
annotated store: for every problem with both passing and failing generated programs, the AUC of a
per-program score (the probability that a passing program scores above a failing one, ties half),
averaged over those problems.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from bcoder_core.errors import BcoderError


def within_problem_auc(rows: Iterable[tuple[str, bool, float]]) -> tuple[float, int]:
    """Mean AUC over problems with mixed outcomes of ``(problem_id, passed, score)`` rows, and
    the number of such problems (NaN and 0 when there are none)."""
    groups: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    for pid, passed, score in rows:
        groups[pid].append((bool(passed), float(score)))
    aucs = []
    for items in groups.values():
        pos = np.array([s for ok, s in items if ok])
        neg = np.array([s for ok, s in items if not ok])
        if len(pos) and len(neg):
            greater = (pos[:, None] > neg[None, :]).mean()
            ties = (pos[:, None] == neg[None, :]).mean()
            aucs.append(greater + 0.5 * ties)
    return (float(np.mean(aucs)) if aucs else float("nan")), len(aucs)


def value_discrimination(store: Any) -> dict[str, Any]:
    """Within-problem AUCs of V_φ and of Σ A_ckpt over the generated programs of ``store``.

    ``v_last`` is V_φ at the last state (the whole program but EOS, whose TD target is the return
    itself), ``v_mean`` its mean over the program, ``sum_ckpt_adv`` the checkpoint's Σ_t A_ckpt —
    the likelihood-like part of R̃, for comparison.
    """
    import torch

    from bcoder_core.rl.bounds import bound

    if not store.has_v_phi:
        raise BcoderError(f"{store.path}: the store has no v_phi column; annotate it with --phi first")
    rows: dict[str, list[tuple[str, bool, float]]] = {"v_last": [], "v_mean": [], "sum_ckpt_adv": []}
    n = 0
    for rec in store:
        if rec.is_gt:
            continue
        n += 1
        v = bound(torch.from_numpy(rec.v_phi)).numpy()
        passed = rec.reward > 0
        rows["v_last"].append((rec.problem_id, passed, float(v[-1])))
        rows["v_mean"].append((rec.problem_id, passed, float(v.mean())))
        rows["sum_ckpt_adv"].append((rec.problem_id, passed, float(rec.ckpt_adv.sum())))
    out: dict[str, Any] = {"generated_programs": n}
    for name, r in rows.items():
        auc, problems = within_problem_auc(r)
        out[name] = auc
        out["mixed_problems"] = problems
    return out
