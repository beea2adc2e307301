"""Running the ``bcoder`` command as a user would: a child process from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from helpers.paths import REPO


def bcoder(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    """``python -m jobs.cli ARGS`` with text output captured; ``env`` adds to (or replaces in) ours.

    ``BCODER_TEST_SECRET`` (a canary some tests plant to check that programs cannot read the
    environment) is never passed on.
    """
    child_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "BCODER_TEST_SECRET"}
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env,
        **kw,
    )
