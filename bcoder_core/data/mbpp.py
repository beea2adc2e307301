"""MBPP loader (Austin et al., 2021): the original ``mbpp.jsonl`` (``text, code, task_id,
test_setup_code, test_list, challenge_test_list``).

Splits by task id, the standard ones (and the paper's 374/90/500 + 10):

    1–10 ``prompt`` (few-shot examples), 11–510 ``test``, 511–600 ``validation``, 601–974 ``train``

Each task becomes an ``assert`` problem with id ``mbpp/<task_id>``:

* ``question`` = ``text``; ``starter_code`` = ``""``; ``difficulty`` = None.
* ``tests`` = ``{"asserts": test_list, "setup": test_setup_code}``.
  **Decision:** ``challenge_test_list`` is left out. The standard MBPP evaluation (and every
  pass@k published on MBPP that the paper compares with) uses ``test_list`` only; the challenge
  tests exist for 11 tasks and are not part of any reported protocol.
* ``example_tests`` = the first assertion with the same setup. MBPP prompts show tests (the
  WizardCoder format shows all three, see ``bcoder_core.prompts.build_mbpp_prompt``), so with that
  prompt the filtered protocol on MBPP is not a meaningful protocol; it exists for APPS.
* ``solutions`` = ``[code]`` with Windows line endings (``\\r\\n`` in the file) made ``\\n``.

Some MBPP reference solutions fail their own tests (known upstream); they are listed, not edited,
in ``bcoder_core.execution.known_bad`` (the calibration list).
"""

from __future__ import annotations

from pathlib import Path

from bcoder_core.data.common import Collector, LoadResult, normalize_newlines
from bcoder_core.errors import BcoderError

SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}


def mbpp_split(task_id: int) -> str | None:
    """The standard split of an MBPP task id, or None outside 1–974."""
    for name, (lo, hi) in SPLITS.items():
        if lo <= task_id <= hi:
            return name
    return None


def load_mbpp(source: str | Path, *, split: str | None = None, strict: bool = False) -> LoadResult:
    """MBPP problems of ``source`` (a JSONL file), all splits or only ``split``."""
    path = Path(source)
    if path.is_dir():
        path = path / "mbpp.jsonl"
    if not path.is_file():
        raise BcoderError(f"{source}: no such MBPP file")
    if split is not None and split not in SPLITS:
        raise BcoderError(f"--split {split!r}: MBPP splits are {', '.join(SPLITS)}")
    out = Collector(strict)
    for where, row in out.rows(path):
        task_id = row.get("task_id")
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            out.bad(where, "task_id is not an integer")
            continue
        record_id = f"mbpp/{task_id}"
        task_split = mbpp_split(task_id)
        if task_split is None:
            out.bad(record_id, "task_id outside 1-974 (no standard split)")
            continue
        if split is not None and task_split != split:
            continue
        text, code, setup, tests = (row.get(k) for k in ("text", "code", "test_setup_code", "test_list"))
        if not isinstance(text, str) or not text.strip():
            out.bad(record_id, "no text")
            continue
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            out.bad(record_id, "test_list is not a non-empty list of assertions")
            continue
        if setup is None:
            setup = ""
        if not isinstance(setup, str):
            out.bad(record_id, "test_setup_code is not text")
            continue
        if not isinstance(code, str):
            out.bad(record_id, "code is not text")
            continue
        out.build(
            record_id,
            source="mbpp",
            split=task_split,
            question=text,
            format="assert",
            tests={"asserts": list(tests), "setup": setup},
            example_tests={"asserts": [tests[0]], "setup": setup},
            solutions=[normalize_newlines(code)] if code.strip() else [],
        )
    return out.result
