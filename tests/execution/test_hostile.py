"""Hostile programs against the executor, under every sandbox (DESIGN §4).

For each hostile program: the worker survives (programs after it in the same run still get results),
the verdict is right, nothing escapes (the side effect is checked on the host and did not happen),
and it ends within its time limits. One run per sandbox executes all of them together with ordinary
programs, two workers, interleaved; the tests below then check each case.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.problems import assert_problem, call_problem, stdin_problem

from bcoder_core.execution import ExecutionConfig, Executor
from bcoder_core.problems import Problem

SECRET = "bcoder-test-secret-" + uuid.uuid4().hex
MAGIC = 10**12 + uuid.uuid4().int % 10**11
"""The expected value of the ``magic`` tests: also written in the problem files the read attacks look for."""
TAG = uuid.uuid4().hex[:12]
TIMEOUT = 2.0
PROGRAM_TIMEOUT = 5.0
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
        # the expected value is a number no program can guess: only reading it somewhere would pass
        "magic": assert_problem("magic", [f"assert f(1) == {MAGIC}", f"assert abs(f(2) - {MAGIC}.5) < 1e-6"]),
        "he_check": assert_problem(
            "he_check",
            [
                f"METADATA = {{}}\n\ndef check(candidate):\n    assert candidate(1) == {MAGIC}\n"
                f"    assert candidate(2) == {MAGIC + 1}\n\ncheck(f)\n"
            ],
        ),
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
    # --- the file-system view: each prints 'ok' only when it found none of the problems / expected values
    "read_problem_files": (
        "ok",
        "import os, glob\nfound = []\npaths = {problem_files!r} + [{repo!r} + '/tests/fixtures/mbpp/mbpp.jsonl']\n"
        "for f in glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ'):\n    try:\n"
        "        for part in open(f, 'rb').read().replace(b'=', b'\\0').split(b'\\0'):\n"
        "            if part.startswith(b'/'): paths.append(part.decode(errors='replace'))\n"
        "    except OSError:\n        pass\n"
        "import time\nt0 = time.monotonic()\n"
        "for top in ('/root', '/usr', '/work', '/home', '/opt', '/tmp', '/srv', '/data'):\n"
        "    for root, dirs, files in os.walk(top):\n        if time.monotonic() - t0 > 1.0: break\n"
        "        paths += [os.path.join(root, f) for f in files if f.startswith(('HumanEval', 'mbpp'))]\n"
        "for p in paths:\n    try:\n        data = open(p, 'rb').read()\n    except OSError:\n        continue\n"
        "    if {secret!r}.encode() in data or str({magic}).encode() in data or p.endswith(('.jsonl', '.gz')):\n"
        "        found.append(p)\nprint('LEAK ' + ' '.join(found) if found else 'ok')\n",
    ),
    "list_processes": (
        "ok",
        # The worker (PID 1) and its zygote are trusted; under gVisor, which ignores hidepid, a program
        # sees them (both root, their memory and descriptors out of its reach: see the shared-sandbox
        # attacks below); elsewhere it sees neither.
        "import os\nme = os.getpid()\nothers = []\nfor p in os.listdir('/proc'):\n"
        "    if p.isdigit() and int(p) not in (me, *{trusted!r}):\n        others.append(p)\n"
        "print('SEEN ' + ' '.join(others) if others else 'ok')\n",
    ),
    "tmp_flood": (
        "ok",
        "import os\ntotal = 0\nchunk = b'x' * (1 << 20)\n"
        "for d in ('/tmp', '/var/tmp', '/dev/shm', os.getcwd()):\n    for k in range(400):\n        try:\n"
        "            with open(os.path.join(d, f'flood-{{k}}'), 'wb') as f:\n"
        "                for _ in range(16):\n                    f.write(chunk)\n                    total += len(chunk)\n"
        "        except OSError:\n            break\n"
        "print('ok' if total <= 512 * (1 << 20) else f'WROTE {{total >> 20}} MB')\n",
    ),
    "unix_socket": (
        "ok",
        "import os, socket\nhit = []\ncands = {unix_sockets!r} + ['/run/docker.sock', '/var/run/docker.sock']\n"
        "for d in ('/run', '/var/run', '/tmp'):\n    for root, dirs, files in os.walk(d):\n"
        "        cands += [os.path.join(root, f) for f in files]\n"
        "for c in cands:\n    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(c)\n        hit.append(c)\n"
        "    except OSError:\n        pass\n    s.close()\nprint('CONNECTED ' + ' '.join(hit) if hit else 'ok')\n",
    ),
    "write_host_dirs": (
        "ok",
        "import os\nfor p in {run_markers!r}:\n    try:\n        open(p, 'w').write('x')\n"
        "    except OSError:\n        pass\nprint('ok')\n",
    ),
    # --- assert-format tests decided in the parent: each must not pass
    "forge_channel_magic": (
        "magic",
        "import gc, os, json\nfrom bcoder_core.execution import child\n"
        "ch = next(o for o in gc.get_objects() if isinstance(o, child._Channel))\n"
        "for m in [dict(kind='loaded')] + [dict(kind='test', index=i, status='ok', value='[true]') for i in range(2)]"
        " + [dict(kind='done')]:\n    ch.send(**m)\nos._exit(0)\n",
    ),
    "forge_channel_in_check": (
        "he_check",
        "import gc, os\ndef f(x):\n    from bcoder_core.execution import child\n"
        "    ch = next(o for o in gc.get_objects() if isinstance(o, child._Channel))\n"
        "    ch.send('test', index=0, status='ok', value='[true, true]')\n    ch.send('done')\n    os._exit(0)\n",
    ),
    "rigged_eq_assert": (
        "magic",
        "class A:\n    def __eq__(self, o):\n        return True\n    def __sub__(self, o):\n        return 0\n"
        "    __hash__ = None\ndef f(x):\n    return A()\n",
    ),
    "rigged_int_subclass": (
        "he_check",
        "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
        "def f(x):\n    return I(0)\n",
    ),
    "monkeypatch_builtins": (
        "magic",
        "import builtins, json, operator\nbuiltins.abs = lambda x: 0\nbuiltins.AssertionError = type('N', (Exception,), {{}})\n"
        "operator.eq = lambda a, b: True\n_dumps = json.dumps\njson.dumps = lambda *a, **k: '[true]'\n"
        "def f(x):\n    return 0\n",
    ),
    "read_expected_from_memory": (
        "magic",
        "import gc, glob, re\ndef f(x):\n    nums = []\n"
        "    for o in gc.get_objects():\n        co = o if type(o).__name__ == 'code' else getattr(o, '__code__', None)\n"
        "        if type(co).__name__ == 'code':\n            nums += [c for c in co.co_consts if type(c) is int and c > 10**11]\n"
        "    for p in glob.glob('/proc/*/mem') + glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ'):\n"
        "        try:\n            with open(p, 'rb') as fh:\n                nums += [int(m) for m in re.findall(rb'1\\d{{12}}', fh.read(1 << 20))]\n"
        "        except (OSError, ValueError, OverflowError):\n            pass\n"
        "    return nums[0] if nums else -1\n",
    ),
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
    "read_problem_files": {"passed"},
    "list_processes": {"passed"},
    "tmp_flood": {"passed"},
    "unix_socket": {"passed"},
    "write_host_dirs": {"passed"},
    "forge_channel_magic": {"failed"},
    "forge_channel_in_check": {"failed", "runtime_error"},
    "rigged_eq_assert": {"failed"},
    "rigged_int_subclass": {"failed"},
    "monkeypatch_builtins": {"failed", "runtime_error"},  # its json.dumps breaks the channel too
    "read_expected_from_memory": {"failed"},
}
PROBES = ("read_problem_files", "list_processes", "tmp_flood", "unix_socket", "write_host_dirs")
"""Attacks that print 'ok' only when they failed to find (or reach, or fill) what they looked for."""
ASSERT_ATTACKS = (
    "forge_channel_magic",
    "forge_channel_in_check",
    "rigged_eq_assert",
    "rigged_int_subclass",
    "monkeypatch_builtins",
    "read_expected_from_memory",
)


def _available(sandbox: str) -> str | None:
    if sandbox == "bwrap" and not shutil.which("bwrap"):
        return "bwrap (bubblewrap) is not installed"
    if sandbox == "gvisor" and not shutil.which("runsc"):
        return "runsc (gVisor) is not installed"
    return None


class Listener:
    def __init__(self, unix_path: str | None = None) -> None:
        if unix_path is None:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        else:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(unix_path)
            os.chmod(unix_path, 0o777)  # reachable by any user: only the view may keep programs off it
        self.sock.listen(16)
        self.sock.settimeout(0.2)
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
    # A problem set with the expected values, where a run keeps one (the run dir), in the checkout, and
    # named on the command line and in the environment of a process of the host.
    run_dir = tmp_path_factory.mktemp(f"hostile-run-{sandbox}")
    os.chmod(run_dir, 0o755)
    problem_files = [str(run_dir / "problems.jsonl"), str(REPO / f"hostile-problems-{TAG}.jsonl")]
    for f in problem_files:
        Path(f).write_text(f'{{"id": "magic", "secret": "{SECRET}", "expected": {MAGIC}}}\n')
        os.chmod(f, 0o644)
    decoy = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", problem_files[0]],
        env={"BCODER_PROBLEMS": problem_files[1], "PATH": os.environ.get("PATH", "")},
    )
    unix_sockets = [str(run_dir / "host.sock"), f"/tmp/bcoder-host-{TAG}.sock"]
    unix_listeners = [Listener(p) for p in unix_sockets]
    run_markers = [str(run_dir / f"marker-{TAG}"), str(Path(problem_files[1]).with_suffix(".marker"))]
    fmt = {
        "problem_files": problem_files,
        "repo": str(REPO),
        "magic": MAGIC,
        "unix_sockets": unix_sockets,
        "run_markers": run_markers,
        "markers": HOST_MARKERS,
        "secret": SECRET,
        "secret_file": str(secret_file),
        "port": listener.port,
        "tag": TAG,
        "sleep": 1.9,
        "trusted": [1, 2],
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
            isolation = ex.isolation
            results = {r["sample_id"]: r for r in ex.run(_problems(), samples)}
            workers_alive = all(w.proc.poll() is None for w in ex._workers)
            uids = list(ex._lease.uids) if ex._lease else []
            time.sleep(0.3)
            leftovers = _processes_of(uids)
    finally:
        listener.close()
        unix_accepted = sum(u.accepted for u in unix_listeners)
        for u in unix_listeners:
            u.close()
        for p in unix_sockets:
            with contextlib.suppress(OSError):
                os.unlink(p)
        decoy.kill()
        decoy.wait()
        with contextlib.suppress(OSError):
            os.unlink(problem_files[1])
        os.environ.pop("BCODER_TEST_SECRET", None)
    elapsed = time.monotonic() - started
    markers_found = [m for m in [*HOST_MARKERS, *run_markers] if os.path.exists(m)]
    for m in markers_found:
        os.unlink(m)
    shutil.rmtree(secret_dir, ignore_errors=True)
    return {
        "sandbox": sandbox,
        "results": results,
        "workers_alive": workers_alive,
        "worker_pids": worker_pids,
        "accepted": listener.accepted,
        "unix_accepted": unix_accepted,
        "isolation": isolation,
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


def test_the_file_system_view_and_pid_view_hold(hostile_run):
    """The allow-listed view is in place (here, as root, in every sandbox) and none of the probes found
    the problems, another process, a host socket or room beyond the memory budget."""
    iso = hostile_run["isolation"]
    assert iso["fs_view"].startswith("allow-list"), iso
    assert iso["pidns"] and iso["proc"] != "host", iso
    assert iso["zygote_pid"] == 2, iso  # the only process, beside PID 1, that list_processes may see
    for name in PROBES:
        r = hostile_run["results"][name]
        assert r["verdict"] == "passed", (hostile_run["sandbox"], name, r)
    assert hostile_run["unix_accepted"] == 0, "a program reached a Unix socket of the host"
    assert hostile_run["markers"] == [], "a program wrote into a host directory"


def test_assert_tests_cannot_be_forged(hostile_run):
    for name in ASSERT_ATTACKS:
        r = hostile_run["results"][name]
        assert r["verdict"] != "passed" and r["tests_passed"] == 0, (hostile_run["sandbox"], name, r)


# ------------------------------------------------------------------------ one sandbox, many programs
#
# Every program of a worker runs in the same boundary (one runsc sandbox, one bwrap, one worker), as
# a child of the same zygote, as the same user, with the same /tmp mount point. These attacks try to
# reach the program that runs next on the same worker (one worker: the order is the samples' order):
# each attacker must not pass, and the honest program right after it must pass.

STOLEN = 10**12 + (uuid.uuid4().int >> 7) % 10**11
"""The answer only the holder's source has: a program that finds it elsewhere steals another candidate's work."""

# Looks for the holder's ``return <STOLEN>`` wherever a program might: its own memory (inherited from the
# zygote), every process's cmdline, environ and memory, every descriptor it can open through /proc
# (the worker's and the zygote's included: pipes, memfds), and the files under /tmp.
_SCAN = r"""
import ctypes, os, re, sys
PAT = re.compile(rb"return (1\d{12})\b")
def _own_memory(grab):
    # /proc/self/mem is root's once the program's user is set (not dumpable): read the heap through a
    # pipe instead (write() from an unmapped address fails with EFAULT, it never faults), around objects
    # of every kind of allocation, the ones inherited from the zygote included.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    r, w = os.pipe()
    os.set_blocking(w, False)
    step, span = 1 << 16, 12 << 20
    anchors = {id(o) & ~(step - 1) for o in (object(), "x" * 100, bytes(1 << 20), [0] * 1000, sys.modules, os, re.compile)}
    seen = set()
    for a in sorted(anchors):
        for addr in range(max(a - span, step), a + span, step):
            if addr in seen:
                continue
            seen.add(addr)
            n = libc.write(w, addr, step)
            if n > 0:
                grab(os.read(r, n))
    os.close(r)
    os.close(w)
def scan(found):
    def grab(data):
        found.update(int(m) for m in PAT.findall(data))
    _own_memory(grab)
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        for name in ("cmdline", "environ", "mem"):
            try:
                with open(f"/proc/{pid}/{name}", "rb", 0) as fh:
                    grab(fh.read(1 << 22))
            except (OSError, ValueError):
                pass
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        for fd in fds:
            try:
                d = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                grab(os.pread(d, 1 << 22, 0))
            except OSError:
                try:
                    grab(os.read(d, 1 << 22))
                except OSError:
                    pass
            finally:
                os.close(d)
    for root, dirs, files in os.walk("/tmp"):
        for f in files:
            try:
                with open(os.path.join(root, f), "rb") as fh:
                    grab(fh.read(1 << 22))
            except OSError:
                pass
"""

_DAEMON = "import os, time, signal\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        end = time.time() + 6\n"

SHARED_ATTACKS: list[tuple[str, str, str, str]] = [
    # (name, role, problem id, code): role "attack" must not pass, "honest" and "probe" must pass.
    (
        "linger_daemon_kills_and_poisons",
        "attack",
        "ok",
        _DAEMON + "        me = os.getpid()\n        while time.time() < end:\n"
        "            for p in os.listdir('/proc'):\n                if p.isdigit() and int(p) != me:\n"
        "                    try:\n                        os.kill(int(p), signal.SIGKILL)\n"
        "                    except OSError:\n                        pass\n"
        "            for root, dirs, files in os.walk('/tmp'):\n"
        "                for d in [root] + [os.path.join(root, x) for x in dirs]:\n"
        "                    try:\n                        open(os.path.join(d, 'poison-@TAG@'), 'w').write('x')\n"
        "                    except OSError:\n                        pass\n            time.sleep(0.005)\n"
        "    os._exit(0)\nprint('attacked')\n",
    ),
    (
        "after_linger_daemon",
        "honest",
        "ok",
        "import os, time\ntime.sleep(0.5)\n"
        "left = [r for r, d, f in os.walk('/tmp') if 'poison-@TAG@' in f]\nprint('POISONED' if left else 'ok')\n",
    ),
    (
        "daemon_waits_to_steal",
        "attack",
        "ok",
        _SCAN + _DAEMON + "        found = set()\n        while time.time() < end:\n            scan(found)\n"
        "            if found:\n                for d in ('/tmp', '/dev/shm', '/var/tmp'):\n"
        "                    try:\n                        open(d + '/stolen-@TAG@', 'w').write(repr(sorted(found)))\n"
        "                    except OSError:\n                        pass\n            time.sleep(0.01)\n"
        "    os._exit(0)\nprint('attacked')\n",
    ),
    ("holder", "honest", "steal", "def f(x):\n    return @STOLEN@\n"),
    (
        "thief_after_holder",
        "attack",
        "steal",
        _SCAN + "import ast\ndef f(x):\n    found = set()\n    for d in ('/tmp', '/dev/shm', '/var/tmp'):\n"
        "        try:\n            found.update(ast.literal_eval(open(d + '/stolen-@TAG@').read()))\n"
        "        except (OSError, ValueError, SyntaxError):\n            pass\n    scan(found)\n"
        "    return sorted(found)[0] if found else -1\n",
    ),
    ("after_thief", "honest", "call", "def f(x):\n    return 2 * x\n"),
    (
        "pid_exhaustion",
        "attack",
        "ok",
        "import os, time\nn = 0\nwhile n < 100000:\n    try:\n        pid = os.fork()\n    except OSError:\n"
        "        break\n    if pid == 0:\n        os.setsid()\n        time.sleep(60)\n        os._exit(0)\n"
        "    n += 1\nprint('attacked', n)\n",
    ),
    (
        "after_pid_exhaustion",
        "honest",
        "ok",
        "import os\nfor _ in range(20):\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n"
        "    os.waitpid(pid, 0)\nprint('ok')\n",
    ),
    (
        "fill_and_litter_tmp",
        "attack",
        "ok",
        # A tree deeper than any recursive removal goes (the worker once died of it), odd files, then
        # /tmp filled up (a tmpfs: ENOSPC) and thousands of entries.
        "import os\ntry:\n    os.mkdir('/tmp/deep')\n    os.chdir('/tmp/deep')\n    for _ in range(2000):\n"
        "        os.mkdir('d')\n        os.chdir('d')\n    open('marker-@TAG@', 'w').close()\nexcept OSError:\n"
        "    pass\nos.chdir('/')\nfor src, dst in (('/etc', '/tmp/link-etc'), ('/', '/tmp/link-root')):\n"
        "    try:\n        os.symlink(src, dst)\n    except OSError:\n        pass\ntry:\n"
        "    os.mkfifo('/tmp/fifo-@TAG@')\n    os.mkdir('/tmp/locked')\n    open('/tmp/locked/f', 'w').close()\n"
        "    os.chmod('/tmp/locked', 0)\nexcept OSError:\n    pass\nchunk = b'x' * (1 << 20)\nfor k in range(64):\n"
        "    try:\n        with open(f'/tmp/fill-{k}', 'wb') as f:\n            for _ in range(32):\n"
        "                f.write(chunk)\n    except OSError:\n        break\nfor k in range(5000):\n    try:\n"
        "        open(f'/tmp/e{k}', 'w').close()\n    except OSError:\n        break\nprint('attacked')\n",
    ),
    (
        "after_fill_and_litter_tmp",
        "honest",
        "ok",
        "import os\nwith open('/tmp/v', 'wb') as f:\n    f.write(b'y' * (16 << 20))\n"
        "left = [n for n in os.listdir('/tmp') if n != 'v' and not n.startswith('bcoder-work-')]\n"
        "print('LEFT ' + ' '.join(left[:5]) if left else 'ok')\n",
    ),
    (
        "signal_and_trace_trusted",
        "attack",
        "ok",
        "import os, signal, ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nme = os.getpid()\n"
        "pids = {int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != me} | {1, 2}\nfor p in pids:\n"
        "    for req in (16, 0x4206):\n        libc.ptrace(req, p, 0, 0)\n"
        "    for s in (signal.SIGSTOP, signal.SIGTERM, signal.SIGSEGV, signal.SIGKILL):\n"
        "        try:\n            os.kill(p, s)\n        except OSError:\n            pass\nprint('attacked')\n",
    ),
    ("after_signal_and_trace", "honest", "assert", "def f(x):\n    return 2 * x\n"),
    (
        "write_trusted_descriptors",
        "attack",
        "ok",
        "import os\nme = str(os.getpid())\nfor pid in os.listdir('/proc'):\n    if not pid.isdigit() or pid == me:\n"
        "        continue\n    try:\n        fds = os.listdir(f'/proc/{pid}/fd')\n    except OSError:\n        continue\n"
        "    for fd in fds:\n        for mode in (os.O_WRONLY, os.O_RDWR):\n            try:\n"
        "                d = os.open(f'/proc/{pid}/fd/{fd}', mode | os.O_NONBLOCK)\n            except OSError:\n"
        '                continue\n            for junk in (b\'\\x00\\x00\\x00\\x10{"type": "end"}\\n\', b\'{"pid": 1, "status": 0}\'):\n'
        "                try:\n                    os.write(d, junk)\n                    os.pwrite(d, junk, 0)\n"
        "                except OSError:\n                    pass\n            try:\n                os.ftruncate(d, 0)\n"
        "            except OSError:\n                pass\n            os.close(d)\nprint('attacked')\n",
    ),
    ("after_write_trusted_descriptors", "honest", "double", "print(2 * int(input()))\n"),
    (
        "poison_imports",
        "attack",
        "ok",
        "import os, sys\npayload = 'POISON = True\\n'\n"
        "dirs = {p for p in sys.path if p} | {'/tmp', '/var/tmp', os.getcwd(), os.path.dirname(os.getcwd()),"
        " os.path.dirname(os.__file__)}\nfor d in dirs:\n"
        "    for name in ('fractions.py', 'colorsys.py', 'sitecustomize.py', 'typing.py', 'json/__init__.py'):\n"
        "        try:\n            open(os.path.join(d, name), 'w').write(payload)\n        except OSError:\n"
        "            pass\n    try:\n        os.makedirs(os.path.join(d, '__pycache__'), exist_ok=True)\n"
        "        open(os.path.join(d, '__pycache__', 'colorsys.cpython-311.pyc'), 'wb').write(b'junk')\n"
        "    except OSError:\n        pass\nprint('attacked')\n",
    ),
    (
        "after_poison_imports",
        "honest",
        "ok",
        "import colorsys, fractions, json, typing\n"
        "bad = [m.__name__ for m in (colorsys, fractions, json, typing) if hasattr(m, 'POISON')]\n"
        "print('POISONED ' + ' '.join(bad) if bad else 'ok')\n",
    ),
    (
        "poison_interpreter",
        "attack",
        "check",
        "import builtins, gc, json, math, operator, os, sys, typing\nbuiltins.sorted = lambda *a, **k: []\n"
        "builtins.len = lambda x: 0\nbuiltins.sum = lambda *a: 0\nmath.sqrt = lambda x: -1.0\n"
        "json.dumps = lambda *a, **k: '\"poisoned\"'\noperator.mul = lambda a, b: 0\ntyping.List = None\n"
        "sys.setrecursionlimit(40)\ngc.disable()\nos.environ['POISON'] = '1'\nos.umask(0)\n"
        "def f(x):\n    return -1\n",
    ),
    (
        "after_poison_interpreter",
        "honest",
        "check",
        "import json, math, os\nfrom typing import List\ndef depth(n):\n    return n if n == 0 else 1 + depth(n - 1)\n"
        "def f(x: List[int]):\n    return [sorted(x), len(x), sum(x), math.sqrt(16), json.dumps([1]), depth(200),"
        " 'POISON' in os.environ, oct(os.umask(0o77))]\n",
    ),
    (
        "timeout_leaves_daemon",
        "attack",
        "ok",
        _DAEMON + "        while time.time() < end:\n            try:\n"
        "                open('/tmp/late-@TAG@', 'w').write('x')\n            except OSError:\n                pass\n"
        "            time.sleep(0.005)\n    os._exit(0)\nwhile True:\n    pass\n",
    ),
    (
        "after_timeout_leaves_daemon",
        "honest",
        "ok",
        "import os, time\ntime.sleep(0.3)\nprint('LATE' if os.path.exists('/tmp/late-@TAG@') else 'ok')\n",
    ),
    (
        "stopped_and_zombie_children",
        "attack",
        "ok",
        "import os, signal\nfor k in range(10):\n    pid = os.fork()\n    if pid == 0:\n        if k % 2:\n"
        "            os.kill(os.getpid(), signal.SIGSTOP)\n        os._exit(0)\nprint('attacked')\n",
    ),
    ("after_stopped_and_zombie_children", "honest", "ok", "print('ok')\n"),
    (
        "descriptors_of_a_program",
        "probe",
        "ok",
        "import os\nfds = []\nfor fd in sorted(int(x) for x in os.listdir('/proc/self/fd')):\n    try:\n"
        "        fds.append((fd, os.readlink(f'/proc/self/fd/{fd}')))\n    except OSError:\n        pass\n"
        "extra = [link for fd, link in fds if fd > 2]\n"
        "bad = [link for fd, link in fds if link.startswith('socket') or 'job' in link or 'zygote' in link]\n"
        "print('ok' if not bad and len(extra) == 1 and extra[0].startswith('pipe') else 'LEAK ' + repr(fds))\n",
    ),
]


def _shared_problems() -> dict[str, Problem]:
    check_out = [[[1, 2, 3], 3, 6, 4.0, "[1]", 200, False, "0o77"]]
    return {
        "ok": stdin_problem("ok", ["5\n"], ["ok\n"], source="hostile"),
        "double": stdin_problem("double", ["5\n"] * 2, ["10\n"] * 2, source="hostile"),
        "call": call_problem("call", "f", [[1], [2]], [[2], [4]], source="hostile"),
        "assert": assert_problem("assert", ["assert f(1) == 2", "assert f(2) == 4"], source="hostile"),
        "steal": call_problem("steal", "f", [[1]], [[STOLEN]], source="hostile"),
        "check": call_problem("check", "f", [[[3, 1, 2]]], [check_out], source="hostile"),
    }


@pytest.fixture(scope="module", params=["process", "bwrap", "gvisor"])
def shared_run(request):
    sandbox = request.param
    reason = _available(sandbox)
    if reason:
        pytest.skip(reason)
    samples = [
        {
            "problem_id": pid,
            "sample_id": name,
            "code": code.replace("@TAG@", TAG).replace("@STOLEN@", str(STOLEN)),
        }
        for name, _role, pid, code in SHARED_ATTACKS
    ]
    config = ExecutionConfig(
        workers=1, sandbox=sandbox, timeout_s=TIMEOUT, program_timeout_s=PROGRAM_TIMEOUT, memory_mb=512
    )
    with Executor(config) as ex:
        results = {r["sample_id"]: r for r in ex.run(_shared_problems(), samples)}
        alive = all(w.proc.poll() is None for w in ex._workers)
        uids = list(ex._lease.uids) if ex._lease else []
        time.sleep(0.3)
        leftovers = _processes_of(uids)
    return {"sandbox": sandbox, "results": results, "alive": alive, "leftovers": leftovers}


@pytest.mark.parametrize("name", [name for name, *_ in SHARED_ATTACKS])
def test_one_program_cannot_reach_the_next(shared_run, name):
    role = next(r for n, r, *_ in SHARED_ATTACKS if n == name)
    r = shared_run["results"][name]
    if role == "attack":
        assert r["verdict"] != "passed", (shared_run["sandbox"], name, r)
    else:
        assert r["verdict"] == "passed", (shared_run["sandbox"], name, r)


def test_shared_sandbox_survives_and_is_clean(shared_run):
    assert len(shared_run["results"]) == len(SHARED_ATTACKS)
    assert shared_run["alive"]
    assert shared_run["leftovers"] == [], "processes of the programs' users outlived their programs"
    thief = shared_run["results"]["thief_after_holder"]
    assert thief["tests_passed"] == 0, thief
