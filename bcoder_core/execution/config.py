"""How programs are executed: :class:`ExecutionConfig`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from bcoder_core.config import cli_flags
from bcoder_core.errors import check
from bcoder_core.execution.compare import COMPARE_MODES
from bcoder_core.execution.sandbox import SANDBOXES

TEST_SETS = ("hidden", "example")


@dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
    """How programs are executed (`bcoder execute`)."""

    CLI_FLAGS: ClassVar[dict[str, str]] = cli_flags(
        "workers sandbox timeout_s:--timeout program_timeout_s:--program-timeout memory_mb compare tests"
    )
    """Fields the stage command has a flag for."""

    timeout_s: float = 4.0
    """Wall-clock limit per test (and for loading the program)."""
    memory_mb: int = 1024
    """A program's memory budget: a quarter (at least 8 MB) is its private tmpfs /tmp, the rest the address
    space it may use beyond the worker's own size (RLIMIT_AS); a cgroup v2 ``memory.max`` per worker
    bounds both where one can be had (``sandbox.join_memory_cgroup``)."""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Worker processes running programs in parallel."""
    sandbox: str = "process"
    """Boundary around the workers, one of ``sandbox.SANDBOXES``: none (``process``), bubblewrap
    (``bwrap``), or gVisor (``gvisor``, ``runsc do``)."""
    compare: str = "strict"
    """Output comparison, one of ``compare.COMPARE_MODES``: ``strict`` (DESIGN §4) or ``apps`` (the
    original APPS harness's lenient cascade)."""
    tests: Literal["hidden", "example"] = "hidden"
    """Which tests of each problem to run."""
    max_output_bytes: int = 4 * 1024 * 1024
    """Output (stdout of a test, or a returned value as JSON) beyond this is a failed test."""
    program_timeout_s: float = 60.0
    """Wall-clock limit for all tests of one program together."""
    max_processes: int = 64
    """RLIMIT_NPROC of a program's user (its processes and threads)."""
    max_file_mb: int = 64
    """RLIMIT_FSIZE: the largest file a program may write."""
    max_open_files: int = 256
    """RLIMIT_NOFILE."""
    uid_base: int = 900_000
    """First of the unprivileged user ids given to worker slots (when running as root)."""

    def __post_init__(self) -> None:
        for key in ("timeout_s", "program_timeout_s", "max_output_bytes"):
            value = getattr(self, key)
            check(value > 0, key, f"must be > 0 (got {value!r})")
        check(self.workers >= 1, "workers", f"must be >= 1 (got {self.workers!r})")
        # below this the interpreter itself does not start inside the limit
        check(self.memory_mb >= 16, "memory_mb", f"must be >= 16 (got {self.memory_mb!r})")
        for key, allowed in (("sandbox", SANDBOXES), ("compare", COMPARE_MODES), ("tests", TEST_SETS)):
            value = getattr(self, key)
            check(value in allowed, key, f"must be one of {', '.join(allowed)} (got {value!r})")
