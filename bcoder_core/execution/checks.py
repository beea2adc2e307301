"""Assert-format tests decided in the parent: which assertions can be, and the plain-data values they compare.

An assertion such as ``assert f(3) == (1, 2)`` (MBPP), or HumanEval's ``def check(candidate): assert
candidate(x) == v ... check(entry)``, is split here, in the trusted parent, into the expression the
program's process must evaluate (``f(3)``) and the check on its value (``== (1, 2)``, the expected
value computed from the literal with :func:`ast.literal_eval`). The child is sent only the expression;
it returns the value as typed JSON (:func:`encode_value`), and the parent decodes it into plain Python
data (:func:`decode_value`) and compares. The program never sees the expected value, and nothing it
does in its own process (forging the channel, patching builtins or ``==``, an object whose ``__eq__``
always answers True) can make a wrong value pass: the comparison runs here, on data with no behaviour.

Forms decided in the parent (``L`` a literal expression, ``E`` any other expression):

* ``assert E == L`` and ``assert L == E``, ``assert E != L``;
* ``assert E is True | False | None`` (and ``is not``);
* ``assert E`` and ``assert not E`` (truthiness of the returned plain data);
* ``assert abs(E - L) < tol`` (also ``abs(L - E)``, ``<=``), ``assert math.fabs(...) < tol``;
* ``assert math.isclose(E, L, rel_tol=…, abs_tol=…)`` with literal tolerances;
* HumanEval's ``check(candidate)`` whose body is only such assertions: one test made of several
  values, passed when every check passes (judged in order, like the assertions would be).

Any other shape (a comparison with a name from the setup code, loops, helper calls in the check) runs
in the program's own process, where a determined program can forge the result (DESIGN §4).
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from typing import Any

# The encoding side lives in values (the zygote imports it); re-exported here beside the decoding side.
from bcoder_core.execution.values import MAX_DEPTH, Unencodable, encode_value, encode_values  # noqa: F401

# ----------------------------------------------------------------------------------- typed values


class _Opaque:
    """What an undecodable value becomes: equal to nothing, false, not a number."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return False

    def __bool__(self) -> bool:
        return False

    __hash__ = object.__hash__


OPAQUE = _Opaque()


def _dec(obj: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, list):
        return [_dec(x, depth + 1) for x in obj]
    if isinstance(obj, dict) and len(obj) == 1:
        ((tag, body),) = obj.items()
        if tag == "t" and isinstance(body, list):
            return tuple(_dec(x, depth + 1) for x in body)
        if tag in ("s", "f") and isinstance(body, list):
            items = [_dec(x, depth + 1) for x in body]
            return set(items) if tag == "s" else frozenset(items)
        if tag == "d" and isinstance(body, list):
            out = {}
            for pair in body:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise ValueError("bad dict item")
                out[_dec(pair[0], depth + 1)] = _dec(pair[1], depth + 1)
            return out
        if tag == "b" and isinstance(body, str):
            return bytes.fromhex(body)
        if tag == "c" and isinstance(body, list) and len(body) == 2:
            return complex(float(body[0]), float(body[1]))
    raise ValueError("not a typed value")


def decode_values(text: Any) -> list[Any]:
    """The list of values of one parent-decided test (JSON text of a list of typed values); an element
    that does not decode is :data:`OPAQUE`."""
    try:
        items = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        items = None
    if not isinstance(items, list):
        return []
    out = []
    for item in items:
        try:
            out.append(_dec(item, 0))
        except (ValueError, TypeError, RecursionError):
            out.append(OPAQUE)
    return out


def decode_value(text: Any) -> Any:
    """The plain data of typed JSON text; :data:`OPAQUE` for anything malformed (which fails every check)."""
    if not isinstance(text, str):
        return OPAQUE
    try:
        return _dec(json.loads(text), 0)
    except (ValueError, TypeError, RecursionError):
        return OPAQUE


# ----------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class Check:
    """What the parent does with one evaluated value: ``kind`` with the expected value and tolerances."""

    kind: str
    """``eq``, ``ne``, ``is``, ``is_not``, ``truthy``, ``falsy``, ``abs_lt``, ``abs_le``, ``isclose``."""
    expected: Any = None
    tol: float = 0.0
    rel_tol: float = 1e-9

    def passes(self, value: Any) -> bool:
        if value is OPAQUE:
            return False
        try:
            if self.kind == "eq":
                return bool(value == self.expected)
            if self.kind == "ne":
                return bool(value != self.expected)
            if self.kind == "is":
                return value is self.expected
            if self.kind == "is_not":
                return value is not self.expected
            if self.kind == "truthy":
                return bool(value)
            if self.kind == "falsy":
                return not value
            if not _is_number(value):
                return False
            if self.kind == "abs_lt":
                return bool(abs(value - self.expected) < self.tol)
            if self.kind == "abs_le":
                return bool(abs(value - self.expected) <= self.tol)
            if self.kind == "isclose":
                return math.isclose(value, self.expected, rel_tol=self.rel_tol, abs_tol=self.tol)
        except (TypeError, ValueError, OverflowError, RecursionError):
            return False
        return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float))


@dataclass(frozen=True)
class ParentTest:
    """An assert-format test decided in the parent: the expressions the child evaluates, in order, and
    the check on each value."""

    exprs: tuple[str, ...]
    checks: tuple[Check, ...]


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _is_const(node: ast.expr, value: Any) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _number(node: ast.expr) -> float | None:
    ok, v = _literal(node)
    if ok and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def _abs_arg(node: ast.expr) -> ast.expr | None:
    """The argument of ``abs(x)`` / ``math.fabs(x)``."""
    if not (isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords):
        return None
    f = node.func
    if isinstance(f, ast.Name) and f.id == "abs":
        return node.args[0]
    if (
        isinstance(f, ast.Attribute)
        and f.attr == "fabs"
        and isinstance(f.value, ast.Name)
        and f.value.id == "math"
    ):
        return node.args[0]
    return None


def _split_test(test: ast.expr) -> tuple[ast.expr, Check] | None:
    """(expression for the child, check) of one assertion's condition, or None for other shapes."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return (test.operand, Check("falsy")) if _truthy_ok(test.operand) else None
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, op, right = test.left, test.ops[0], test.comparators[0]
        if isinstance(op, (ast.Eq, ast.NotEq)):
            kind = "eq" if isinstance(op, ast.Eq) else "ne"
            ok, value = _literal(right)
            if ok:
                return left, Check(kind, value)
            ok, value = _literal(left)
            if ok:
                return right, Check(kind, value)
            return None
        if isinstance(op, (ast.Is, ast.IsNot)):
            for const in (True, False, None):
                if _is_const(right, const):
                    return left, Check("is" if isinstance(op, ast.Is) else "is_not", const)
            return None
        if isinstance(op, (ast.Lt, ast.LtE)):
            tol = _number(right)
            diff = _abs_arg(left)
            if tol is None or not (isinstance(diff, ast.BinOp) and isinstance(diff.op, ast.Sub)):
                return None
            kind = "abs_lt" if isinstance(op, ast.Lt) else "abs_le"
            expected = _number(diff.right)
            if expected is not None:
                return diff.left, Check(kind, expected, tol=tol)
            expected = _number(diff.left)
            if expected is not None:
                return diff.right, Check(kind, expected, tol=tol)
        return None
    if isinstance(test, ast.Call):
        f = test.func
        is_isclose = (isinstance(f, ast.Name) and f.id == "isclose") or (
            isinstance(f, ast.Attribute)
            and f.attr == "isclose"
            and isinstance(f.value, ast.Name)
            and f.value.id == "math"
        )
        if is_isclose and len(test.args) == 2:
            kw = {}
            for k in test.keywords:
                v = _number(k.value) if k.arg in ("rel_tol", "abs_tol") else None
                if v is None:
                    return None
                kw[k.arg] = v
            for value_node, expected_node in ((test.args[0], test.args[1]), (test.args[1], test.args[0])):
                expected = _number(expected_node)
                if expected is not None:
                    check = Check(
                        "isclose", expected, tol=kw.get("abs_tol", 0.0), rel_tol=kw.get("rel_tol", 1e-9)
                    )
                    return value_node, check
            return None
    if _truthy_ok(test):
        return test, Check("truthy")
    return None


def _truthy_ok(node: ast.expr) -> bool:
    """A constant, or a call with no comparison inside: the child's value is then only what the program
    returned (a comparison would run in the child, where ``__eq__`` can be rigged)."""
    return isinstance(node, ast.Constant) or (isinstance(node, ast.Call) and not _compares(node))


def _compares(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Compare) for n in ast.walk(node))


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.copy_location(ast.Name(self.new, node.ctx), node) if node.id == self.old else node


def _asserts_of(stmts: list[ast.stmt]) -> list[ast.Assert] | None:
    out = []
    for s in stmts:
        if isinstance(s, ast.Assert):
            out.append(s)
        elif isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)):
            continue
        else:
            return None
    return out


def _check_function(tree: ast.Module) -> list[ast.expr] | None:
    """HumanEval's test: ``METADATA = {...}``, ``def check(candidate): <asserts>``, ``check(name)``;
    the conditions with ``candidate`` replaced by the entry point's name, or None for another shape."""
    body = list(tree.body)
    if len(body) < 2:
        return None
    call = body[-1]
    if not (
        isinstance(call, ast.Expr)
        and isinstance(call.value, ast.Call)
        and isinstance(call.value.func, ast.Name)
        and len(call.value.args) == 1
        and isinstance(call.value.args[0], ast.Name)
        and not call.value.keywords
    ):
        return None
    fn_name, entry = call.value.func.id, call.value.args[0].id
    defs = [s for s in body[:-1] if isinstance(s, ast.FunctionDef)]
    others = [s for s in body[:-1] if not isinstance(s, ast.FunctionDef)]
    for s in others:
        literal_assign = isinstance(s, ast.Assign) and _literal(s.value)[0]
        docstring = isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
        if not (literal_assign or docstring):
            return None
    if len(defs) != 1 or defs[0].name != fn_name:
        return None
    fdef = defs[0]
    a = fdef.args
    if (
        a.posonlyargs
        or a.vararg
        or a.kwonlyargs
        or a.kwarg
        or a.defaults
        or len(a.args) != 1
        or fdef.decorator_list
    ):
        return None
    param = a.args[0].arg
    asserts = _asserts_of(fdef.body)
    if not asserts:
        return None
    return [_Rename(param, entry).visit(s.test) for s in asserts]


def parent_test(source: str) -> ParentTest | None:
    """The parent-decided form of one assert-format test's source, or None (it runs in-process)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
        conditions = [tree.body[0].test]
    else:
        found = _check_function(tree)
        if found is None:
            return None
        conditions = found
    exprs, checks = [], []
    for cond in conditions:
        split = _split_test(cond)
        if split is None:
            return None
        expr, check = split
        if _compares(expr):
            return None  # a comparison inside would run in the child, where __eq__ can be rigged
        exprs.append(ast.unparse(ast.fix_missing_locations(expr)))
        checks.append(check)
    return ParentTest(tuple(exprs), tuple(checks))


def judge_values(test: ParentTest, values: list[Any]) -> tuple[bool, int | None]:
    """(every check passed, index of the first failed check); ``values`` may be a prefix (the evaluation
    stopped at an exception): then it is (False, None) when the checks of the prefix all passed."""
    for k, check in enumerate(test.checks):
        if k >= len(values):
            return False, None
        if not check.passes(values[k]):
            return False, k
    return True, None
