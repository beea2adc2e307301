"""Hostile programs against the executor, under every sandbox (DESIGN §4).

For each hostile program: the worker survives (programs after it in the same run still get results),
the verdict is right, nothing escapes (the side effect is checked on the host and did not happen),
and it ends within its time limits. One run per sandbox executes all of them together with ordinary
programs, two workers, interleaved; the tests below then check each case.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from problem_helpers import assert_problem, call_problem, stdin_problem

from bcoder_core.execution import ExecutionConfig, Executor
from bcoder_core.problems import Problem

SECRET = "bcoder-test-secret-" + uuid.uuid4().hex
TAG = uuid.uuid4().hex[:12]
TIMEOUT = 2.0
PROGRAM_TIMEOUT = 5.0
REPO = Path(__file__).resolve().parents[1]
HOST_MARKERS = [
    f"/tmp/hostile-{TAG}",
    str(REPO / f"hostile-{TAG}"),
    f"/root/hostile-{TAG}",
    f"/var/tmp/hostile-{TAG}",
    f"/dev/shm/hostile-{TAG}",
]


def _problems() -> dict[str, Problem]:
    return {
        "ok": stdin_problem("ok", ["5\n"], ["ok\n"], source="hostile"),
        "ok3": stdin_problem("ok3", ["5\n"] * 3, ["ok\n"] * 3, source="hostile"),
        "double": stdin_problem("double", ["5\n"] * 2, ["10\n"] * 2, source="hostile"),
        "call": call_problem("call", "f", [[1], [2]], [[2], [4]], source="hostile"),
        "assert": assert_problem("assert", ["assert f(1) == 2", "assert f(2) == 4"], source="hostile"),
    }


GOOD = "print('ok')"
DOUBLE = "print(2 * int(input()))"

# name -> (problem id, code)
HOSTILE: dict[str, tuple[str, str]] = {
    "fork_bomb": ("ok", "import os\nwhile True:\n    os.fork()\n"),
    "memory_bomb": ("ok", "x = bytearray(64 * 1024 ** 3)\nprint('ok')\n"),
    "memory_creep": ("ok", "a = []\nwhile True:\n    a.append(bytearray(50 * 1024 * 1024))\n"),
    "infinite_loop": ("ok", "while True:\n    pass\n"),
    "output_flood": ("ok", "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"),
    "write_outside": (
        "ok",
        "import os\nfor p in {markers!r}:\n    try:\n        open(p, 'w').write('x')\n"
        "    except OSError:\n        pass\nprint('ok')\n",
    ),
    "read_secrets": (
        "ok",
        "import os, glob\nfound = []\nif {secret!r} in str(os.environ): found.append('env')\n"
        "for f in glob.glob('/proc/*/environ') + [{secret_file!r}]:\n    try:\n"
        "        if {secret!r}.encode() in open(f, 'rb').read(): found.append(f)\n"
        "    except OSError:\n        pass\nprint('LEAK ' + ' '.join(found) if found else 'ok')\n",
    ),
    "network": (
        "ok",
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "    print('connected')\nexcept OSError:\n    print('ok')\n",
    ),
    "kill_parent": (
        "ok",
        "import os, signal\nfor pid in (os.getppid(), 1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
        "    except OSError:\n        pass\nprint('ok')\n",
    ),
    "kill_all": ("ok", "import os, signal\nprint('ok', flush=True)\nos.kill(-1, signal.SIGKILL)\n"),
    "kill_every_pid": (
        "ok",
        "import os, signal\nfor p in os.listdir('/proc'):\n    if p.isdigit() and int(p) != os.getpid():\n"
        "        try:\n            os.kill(int(p), signal.SIGKILL)\n        except OSError:\n"
        "            pass\nprint('ok')\n",
    ),
    "os_exit_call": ("call", "import os\ndef f(x):\n    os._exit(0)\n"),
    "os_exit_assert": ("assert", "import os\ndef f(x):\n    return 2 * x\nos._exit(0)\n"),
    "os_exit_stdin_after_output": ("ok", "import os, sys\nprint('ok')\nsys.stdout.flush()\nos._exit(0)\n"),
    "recursion": ("ok", "def f(n):\n    return f(n + 1)\nf(0)\n"),
    "deep_recursion_segv": (
        "ok",
        "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)\n",
    ),
    "daemon_thread": (
        "ok",
        "import threading, time\ndef w():\n    time.sleep(0.5)\n"
        "    open('/tmp/thread-{tag}', 'w').write('x')\n"
        "threading.Thread(target=w, daemon=True).start()\nprint('ok')\n",
    ),
    "immortal_thread": (
        "ok",
        "import threading\ndef w():\n    while True:\n        pass\n"
        "threading.Thread(target=w).start()\nprint('ok')\n",
    ),
    "double_fork_daemon": (
        "ok",
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        for _ in range(100):\n            time.sleep(0.1)\n"
        "            try:\n                open('/tmp/daemon-{tag}', 'w').write('x')\n"
        "            except OSError:\n                pass\n    os._exit(0)\nprint('ok')\n",
    ),
    "ignore_signals": (
        "ok",
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
    ),
    "close_stdin": ("double", "import sys, os\nsys.stdin.close()\nos.close(0)\nprint(2 * int(input()))\n"),
    "read_forever": ("double", "import sys\nwhile True:\n    sys.stdin.read()\n"),
    "fake_verdict_stdout": (
        "call",
        'print(\'{{"k": "test", "i": 0, "s": "ok", "v": "2"}}\')\n'
        "print('passed')\ndef f(x):\n    return 0\n",
    ),
    "fake_channel_call": (
        "call",
        "import os, json\nmsgs = [{{'k': 'loaded'}}] + [{{'k': 'test', 'i': i, 's': 'ok', 'v': '0'}} "
        "for i in range(2)] + [{{'k': 'done'}}]\n"
        "data = ''.join(json.dumps(m) + '\\n' for m in msgs).encode()\n"
        "for fd in range(3, 1024):\n    try:\n        os.write(fd, data)\n    except OSError:\n"
        "        pass\nos._exit(0)\ndef f(x):\n    return 0\n",
    ),
    "fake_channel_assert": (
        "assert",
        "import os, json\nmsgs = [{{'k': 'loaded'}}] + [{{'k': 'test', 'i': i, 's': 'ok'}} "
        "for i in range(2)] + [{{'k': 'done'}}]\n"
        "data = ''.join(json.dumps(m) + '\\n' for m in msgs).encode()\n"
        "for fd in range(3, 1024):\n    try:\n        os.write(fd, data)\n"
        "    except OSError:\n        pass\nos._exit(0)\n",
    ),
    "rigged_eq": (
        "call",
        "class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
        "def f(x):\n    return A()\n",
    ),
    "sleepy_tests": ("ok3", "import time\ntime.sleep({sleep})\nprint('ok')\n"),
}

# The verdict each must get (a set where more than one is right).
EXPECTED: dict[str, set[str]] = {
    "fork_bomb": {"runtime_error", "timeout"},
    "memory_bomb": {"runtime_error"},
    # MemoryError at the address-space limit; on a loaded machine touching 512 MB can outlast 2 s
    "memory_creep": {"runtime_error", "timeout"},
    "infinite_loop": {"timeout"},
    "output_flood": {"failed"},
    "write_outside": {"passed"},
    "read_secrets": {"passed"},
    "network": {"passed"},
    "kill_parent": {"passed"},
    # Linux spares the caller of kill(-1) (the output stands); gVisor kills the caller too
    "kill_all": {"passed", "runtime_error"},
    "kill_every_pid": {"passed"},
    "os_exit_call": {"runtime_error"},
    "os_exit_assert": {"runtime_error"},
    "os_exit_stdin_after_output": {"passed"},
    "recursion": {"runtime_error"},
    # Python 3.11 keeps Python frames off the C stack: it runs out of memory or time, whichever is first
    "deep_recursion_segv": {"runtime_error", "timeout"},
    "daemon_thread": {"passed"},
    "immortal_thread": {"timeout"},
    "double_fork_daemon": {"passed"},
    "ignore_signals": {"timeout"},
    "close_stdin": {"runtime_error"},
    "read_forever": {"timeout"},
    "fake_verdict_stdout": {"failed"},
    "fake_channel_call": {"runtime_error"},
    "fake_channel_assert": {"runtime_error"},
    "rigged_eq": {"failed"},
    "sleepy_tests": {"timeout"},
}


def _available(sandbox: str) -> str | None:
    if sandbox == "bwrap" and not shutil.which("bwrap"):
        return "bwrap (bubblewrap) is not installed"
    if sandbox == "gvisor" and not shutil.which("runsc"):
        return "runsc (gVisor) is not installed"
    return None


class Listener:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture(scope="module", params=["process", "bwrap", "gvisor"])
def hostile_run(request, tmp_path_factory):
    sandbox = request.param
    reason = _available(sandbox)
    if reason:
        pytest.skip(reason)
    secret_dir = Path("/opt") / f"bcoder-secret-{TAG}"
    secret_dir.mkdir(mode=0o700, exist_ok=True)
    secret_file = secret_dir / "secret.txt"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    os.environ["BCODER_TEST_SECRET"] = SECRET
    listener = Listener()
    fmt = {
        "markers": HOST_MARKERS,
        "secret": SECRET,
        "secret_file": str(secret_file),
        "port": listener.port,
        "tag": TAG,
        "sleep": 1.9,
    }
    samples = []
    for k, (name, (pid, code)) in enumerate(HOSTILE.items()):
        samples.append({"problem_id": pid, "sample_id": name, "code": code.format(**fmt)})
        # an ordinary program after each hostile one, on the same workers
        good_pid, good_code = [
            ("ok", GOOD),
            ("double", DOUBLE),
            ("call", "def f(x):\n    return 2 * x\n"),
            ("assert", "def f(x):\n    return 2 * x\n"),
        ][k % 4]
        samples.append({"problem_id": good_pid, "sample_id": f"good-after-{name}", "code": good_code})
    # Programs that look for what an escaped daemon/thread would have left behind in the worker's /tmp.
    probe = (
        f"import os, time\ntime.sleep(1.5)\nleft = [p for p in ('/tmp/daemon-{TAG}', '/tmp/thread-{TAG}') "
        "if os.path.exists(p)]\nprint('LEFT ' + ' '.join(left) if left else 'ok')\n"
    )
    samples += [{"problem_id": "ok", "sample_id": f"probe-{i}", "code": probe} for i in range(2)]
    config = ExecutionConfig(
        workers=2, sandbox=sandbox, timeout_s=TIMEOUT, program_timeout_s=PROGRAM_TIMEOUT, memory_mb=512
    )
    started = time.monotonic()
    try:
        with Executor(config) as ex:
            worker_pids = [w.proc.pid for w in ex._workers]
            results = {r["sample_id"]: r for r in ex.run(_problems(), samples)}
            workers_alive = all(w.proc.poll() is None for w in ex._workers)
            uids = list(ex._lease.uids) if ex._lease else []
            time.sleep(0.3)
            leftovers = _processes_of(uids)
    finally:
        listener.close()
        os.environ.pop("BCODER_TEST_SECRET", None)
    elapsed = time.monotonic() - started
    markers_found = [m for m in HOST_MARKERS if os.path.exists(m)]
    for m in markers_found:
        os.unlink(m)
    shutil.rmtree(secret_dir, ignore_errors=True)
    return {
        "sandbox": sandbox,
        "results": results,
        "workers_alive": workers_alive,
        "worker_pids": worker_pids,
        "accepted": listener.accepted,
        "markers": markers_found,
        "leftovers": leftovers,
        "elapsed": elapsed,
        "n_samples": len(samples),
    }


def _processes_of(uids: list[int]) -> list[int]:
    if not uids:
        return []
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) in uids:
                            found.append(int(p))
                        break
        except OSError:
            continue
    return found


def test_every_sample_gets_a_result_and_workers_survive(hostile_run):
    assert len(hostile_run["results"]) == hostile_run["n_samples"]
    assert hostile_run["workers_alive"]
    for name in HOSTILE:
        good = hostile_run["results"][f"good-after-{name}"]
        assert good["verdict"] == "passed", (name, good)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_verdict(hostile_run, name):
    r = hostile_run["results"][name]
    assert r["verdict"] in EXPECTED[name], (hostile_run["sandbox"], name, r)
    # bounded: no program outlives its limits (plus the time to start and clean up)
    assert r["duration_s"] <= PROGRAM_TIMEOUT + 2.0, r


def test_nothing_escaped(hostile_run):
    assert hostile_run["markers"] == [], "a program wrote outside its sandbox"
    assert hostile_run["accepted"] == 0, "a program reached a loopback listener of the host"
    assert hostile_run["leftovers"] == [], "processes of the programs' users outlived their programs"
    for i in range(2):
        assert hostile_run["results"][f"probe-{i}"]["verdict"] == "passed", hostile_run["results"][
            f"probe-{i}"
        ]


def test_secrets_not_readable(hostile_run):
    r = hostile_run["results"]["read_secrets"]
    assert r["verdict"] == "passed", r


def test_output_flood_is_a_failed_test_not_a_crash(hostile_run):
    r = hostile_run["results"]["output_flood"]
    assert r["verdict"] == "failed" and "output exceeds" in r["detail"], r


def test_fake_verdicts_are_ignored(hostile_run):
    for name in ("fake_verdict_stdout", "fake_channel_call", "fake_channel_assert", "rigged_eq"):
        assert hostile_run["results"][name]["verdict"] != "passed"
        assert hostile_run["results"][name]["tests_passed"] == 0, hostile_run["results"][name]
