"""The program-side harness: runs inside the sandboxed child process, after :func:`zygote.enter` (:func:`start`).

It reports on a private channel (a pipe at a descriptor number only the worker and this harness know),
never on stdout, one JSON object per line, each carrying the job's nonce:

* stdin programs (one process per test): ``{"kind": "exit", "status": "ok"|"error", "error": "Type:
  message"}``. stdout itself is captured by the worker and compared in the parent.
* call-based programs (one process for all tests): ``{"kind": "loaded"}``, then per test
  ``{"kind": "test", "index": i, "status": "ok", "value": "<the returned value as JSON>"}`` or
  ``"status": "error"``, then ``{"kind": "done"}``. The value is compared in the parent, against
  expected outputs this process never had.
* assert-based programs: ``loaded``, per assertion ``"status": "ok" | "fail" | "error"``, ``done``; a
  test decided in the parent (:mod:`~bcoder_core.execution.checks`) carries ``"value"``: the typed JSON
  list of the values of its expressions (a prefix, when one raised).

The format is :mod:`bcoder_core.execution.protocol`'s (``channel_line``); the worker reads it back with
:func:`bcoder_core.execution.replay.replay_channel`.

Semantics (DESIGN §4): stdin programs run as ``__main__`` scripts in a fresh module; ``exit()`` /
``sys.exit(0)`` / ``sys.exit()`` end the program normally, another exit code is a runtime error;
non-daemon threads are joined and ``atexit`` handlers run, as at the end of a real script; stdout is
flushed.
"""

from __future__ import annotations

import builtins
import io
import json
import numbers
import os
import sys
import types

from bcoder_core.execution.values import channel_line, encode_values

# Imports the APPS harness puts before every program (and LeetCode/Codewars environments provide):
# used for call-based programs always, and for stdin programs in the ``apps`` comparison mode.
APPS_PRELUDE = (
    "import sys\nimport time\nimport itertools\nfrom itertools import accumulate, product, permutations, "
    "combinations\nimport collections\nfrom collections import Counter, OrderedDict, deque, defaultdict, "
    "ChainMap\nfrom functools import lru_cache\nimport math\nfrom math import sqrt, sin, cos, tan, ceil, "
    "fabs, floor, gcd, exp, log, log2\nimport fractions\nfrom typing import List, Tuple\n"
    "import random\nimport heapq\nfrom heapq import *\n"
)
# The APPS harness also imports numpy as np; only the ``apps`` mode does (the worker then preloads it,
# which makes every fork slower).
APPS_PRELUDE_NUMPY = APPS_PRELUDE + "try:\n    import numpy as np\nexcept ImportError:\n    pass\n"

MAX_DEPTH = 200


class Unrepresentable(Exception):
    pass


def _key(k):
    if isinstance(k, str):
        return str(k)
    if k is None:
        return "null"
    if isinstance(k, bool):
        return "true" if k else "false"
    if isinstance(k, numbers.Integral):
        return str(int(k))
    if isinstance(k, numbers.Real):
        return json.dumps(float(k))
    raise Unrepresentable(f"dict key of type {type(k).__name__}")


def to_json_value(v, depth: int = 0):
    """A returned value as plain JSON data: tuples as lists, numbers as int/float, keys as strings.

    Values with no JSON counterpart (sets, custom objects) become a tagged object that equals no
    expected value.
    """
    if depth > MAX_DEPTH:
        raise Unrepresentable("nested too deeply")
    if v is None or v is True or v is False:
        return v
    if isinstance(v, str):
        return str(v)
    if isinstance(v, bool):
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [to_json_value(x, depth + 1) for x in v]
    if isinstance(v, dict):
        return {_key(k): to_json_value(x, depth + 1) for k, x in v.items()}
    name = type(v).__name__
    if name == "bool_":
        return bool(v)
    if name == "ndarray" and hasattr(v, "tolist"):
        return to_json_value(v.tolist(), depth + 1)
    return {"__bcoder_unrepresentable__": name}


def _describe(exc: BaseException) -> str:
    try:
        msg = str(exc)
    except BaseException:
        msg = "<unprintable>"
    name = type(exc).__name__
    text = f"{name}: {msg}" if msg else name
    return text[:300]


class _Channel:
    def __init__(self, fd: int, nonce: str):
        self._fd = fd
        self._nonce = nonce

    def send(self, kind: str, **fields) -> None:
        view = memoryview(channel_line(self._nonce, kind, **fields))
        while view:
            n = os.write(self._fd, view)
            view = view[n:]


def _setup_stdio(*, stdin_fd: int = 0) -> None:
    sys.stdin = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(stdin_fd, "rb", closefd=False)),
        encoding="utf-8",
        errors="surrogateescape",
    )
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "wb", closefd=False)), encoding="utf-8", errors="backslashreplace"
    )
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "wb", closefd=False)),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def _fresh_module(name: str, workdir: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__["__builtins__"] = builtins
    mod.__file__ = os.path.join(workdir, "solution.py")
    sys.modules[name] = mod
    sys.argv = ["solution.py"]
    if sys.path:
        sys.path[0] = workdir
    return mod


def _finish_script() -> None:
    """What the interpreter does at the end of a script: join threads, run atexit, flush stdout."""
    threading = sys.modules.get("threading")
    if threading is not None:
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()


def _exit_status(exc: SystemExit) -> tuple[bool, str]:
    code = exc.code
    if code is None or code == 0 or code is False:
        return True, ""
    if isinstance(code, int):
        return False, f"SystemExit: exit status {code}"
    try:  # noqa: SIM105 - no contextlib: the zygote does not import it for every program
        print(code, file=sys.stderr)
    except BaseException:
        pass
    return False, f"SystemExit: {str(code)[:200]}"


def run_stdin(nonce: str, code, prelude, chan_fd: int) -> None:
    """One test of a stdin program: run it as ``__main__``. Never returns."""
    chan = _Channel(chan_fd, nonce)
    status, err = "ok", ""
    try:
        _setup_stdio()
        mod = _fresh_module("__main__", os.getcwd())
        try:
            if prelude is not None:
                exec(prelude, mod.__dict__)
            exec(code, mod.__dict__)
        except SystemExit as exc:
            ok, err = _exit_status(exc)
            status = "ok" if ok else "error"
        except BaseException as exc:
            status, err = "error", _describe(exc)
            try:
                import traceback

                traceback.print_exc()
            except BaseException:
                pass
        try:
            _finish_script()
        except SystemExit as exc:
            ok, err2 = _exit_status(exc)
            if not ok and status == "ok":
                status, err = "error", err2
        except BaseException as exc:
            if status == "ok":
                status, err = "error", _describe(exc)
        chan.send("exit", status=status, error=err)
    finally:
        os._exit(0 if status == "ok" else 1)


def _load(code, prelude, name: str):
    mod = _fresh_module(name, os.getcwd())
    if prelude is not None:
        exec(prelude, mod.__dict__)
    exec(code, mod.__dict__)
    return mod


def run_call(fn_name: str, inputs: list, max_output: int, nonce: str, code, prelude, chan_fd: int) -> None:
    """All tests of a call-based program in one process. Never returns."""
    chan = _Channel(chan_fd, nonce)
    try:
        _setup_stdio()
        try:
            mod = _load(code, prelude, "solution")
            ns = mod.__dict__
            fn = None
            sol = ns.get("Solution")
            if isinstance(sol, type):
                fn = getattr(sol(), fn_name, None)
            if fn is None:
                fn = ns.get(fn_name)
            if fn is None or not callable(fn):
                chan.send("load_error", error=f"NameError: the program defines no function {fn_name!r}")
                return
        except BaseException as exc:
            chan.send("load_error", error=_describe(exc))
            return
        chan.send("loaded")
        cap = max_output
        for i, args in enumerate(inputs or []):
            try:
                out = fn(*args) if isinstance(args, list) else fn(args)
                try:
                    text = json.dumps(to_json_value(out), allow_nan=True)
                except (Unrepresentable, RecursionError, ValueError) as exc:
                    text = json.dumps({"__bcoder_unrepresentable__": str(exc)[:100]})
                if len(text) > cap:
                    chan.send("test", index=i, status="overflow")
                else:
                    chan.send("test", index=i, status="ok", value=text)
            except BaseException as exc:
                chan.send("test", index=i, status="error", error=_describe(exc))
        chan.send("done")
    finally:
        os._exit(0)


def run_assert(
    nonce: str, code, prelude, chan_fd: int, setup_code, assert_codes: list, max_output: int = 1 << 22
) -> None:
    """Program, then setup, then each test in the same namespace: an assertion's code object runs here;
    a tuple of expressions is a test decided in the parent (:func:`_evaluate`). Never returns."""
    chan = _Channel(chan_fd, nonce)
    try:
        _setup_stdio()
        try:
            mod = _load(code, prelude, "solution")
        except BaseException as exc:
            chan.send("load_error", error=_describe(exc))
            return
        ns = mod.__dict__
        if setup_code is not None:
            try:
                exec(setup_code, ns)
            except BaseException as exc:
                chan.send("load_error", error="test setup: " + _describe(exc))
                return
        chan.send("loaded")
        for i, snippet in enumerate(assert_codes):
            if isinstance(snippet, tuple):
                _evaluate(chan, i, snippet, ns, max_output)
                continue
            try:
                exec(snippet, ns)
                chan.send("test", index=i, status="ok")
            except AssertionError as exc:
                chan.send("test", index=i, status="fail", error=_describe(exc))
            except BaseException as exc:
                chan.send("test", index=i, status="error", error=_describe(exc))
        chan.send("done")
    finally:
        os._exit(0)


def _evaluate(chan: _Channel, index: int, exprs: tuple, ns: dict, cap: int) -> None:
    """A test decided in the parent: evaluate its expressions in order and send their values (typed
    JSON, :mod:`checks`); the checks, and the expected values, never enter this process."""
    values: list = []
    status, error = "ok", None
    for expr in exprs:
        try:
            values.append(eval(expr, ns))
        except AssertionError as exc:
            status, error = "fail", _describe(exc)
            break
        except BaseException as exc:
            status, error = "error", _describe(exc)
            break
    try:
        text = encode_values(values)
    except BaseException as exc:
        text, status, error = "[]", "error", _describe(exc)
    if len(text) > cap:
        chan.send("test", index=index, status="overflow")
    else:
        chan.send("test", index=index, status=status, value=text, error=error)


# ------------------------------------------------------------------------------- compile and start


def compile_program(source: str, fmt: str):
    """Compile a program. A stdin program may ``return`` at module level to end (the APPS harness runs
    stdin programs inside a function, so APPS solutions and models trained on them do this): that
    ``return`` ends the script like ``sys.exit()``, and nothing else about script semantics changes."""
    try:
        return compile(source, "solution.py", "exec", dont_inherit=True)
    except SyntaxError as exc:
        if fmt != "stdin" or exc.msg != "'return' outside function":
            raise
    import ast  # only here: the zygote does not hold it for every program

    class ModuleReturn(ast.NodeTransformer):
        """``return`` at module level -> ``raise SystemExit`` (functions and classes are left alone)."""

        def visit_FunctionDef(self, node):
            return node

        visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef

        def visit_Return(self, node):
            return ast.copy_location(ast.parse("raise SystemExit").body[0], node)

    tree = ModuleReturn().visit(ast.parse(source, "solution.py"))
    return compile(ast.fix_missing_locations(tree), "solution.py", "exec", dont_inherit=True)


def compile_message(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} (line {exc.lineno})"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def compile_tests(asserts: list) -> list:
    """The assert-format tests: an assertion's code object, or a tuple of expressions whose values are
    judged in the parent (``{"eval": [...]}``). Raises ``ValueError("test k ...")`` on a bad one."""
    out = []
    for k, a in enumerate(asserts):
        try:
            if isinstance(a, dict):
                exprs = a.get("eval")
                if not isinstance(exprs, list) or not all(isinstance(e, str) for e in exprs):
                    raise ValueError("malformed test")
                out.append(tuple(compile(e, f"test_{k}.py", "eval") for e in exprs))
            else:
                out.append(compile(a, f"test_{k}.py", "exec"))
        except BaseException as exc:
            raise ValueError(f"test {k} does not compile: {compile_message(exc)}") from None
    return out


def start(job: dict, chan_fd: int) -> None:
    """In a program's fresh process, isolated already: run its job. Never returns.

    ``job`` is what the worker compiled for this program alone (``format``, ``nonce``, code objects
    ``code``, ``prelude``, ``setup`` and ``tests`` (:func:`compile_tests`), ``fn_name``, ``inputs`` of a
    call-based program, ``max_output``); it never holds expected outputs.
    """
    fmt, nonce = job["format"], job["nonce"]
    if fmt == "stdin":
        run_stdin(nonce, job["code"], job["prelude"], chan_fd)
    elif fmt == "call":
        run_call(
            job["fn_name"] or "",
            job["inputs"] or [],
            job["max_output"],
            nonce,
            job["code"],
            job["prelude"],
            chan_fd,
        )
    else:
        run_assert(nonce, job["code"], job["prelude"], chan_fd, job["setup"], job["tests"], job["max_output"])
    os._exit(70)  # pragma: no cover - each runner ends the process
