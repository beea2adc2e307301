"""Every bad input to every command: one ``error:`` line, exit 2, nothing lost, nothing partial, no scratch.

The cases are in ``helpers/bad_inputs.py`` (also a script that counts them on any checkout).
"""

from __future__ import annotations

import pytest
from helpers.bad_inputs import CASES, judge
from helpers.paths import REPO


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}: {c.name}" for c in CASES])
def test_bad_input_is_one_clean_error(case, tmp_path):
    outcome = judge(case, REPO, tmp_path)
    assert outcome.verdict == "clean", f"{outcome.verdict}: {outcome.stderr[-2000:]}"
