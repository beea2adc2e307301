"""What a program's process writes for the parent: typed JSON values and harness-channel lines.

The only code the parent (:mod:`~bcoder_core.execution.checks`, :mod:`~bcoder_core.execution.protocol`)
shares with the harness inside a program's process (:mod:`~bcoder_core.execution.child`). Kept to
``json`` and ``numbers`` on purpose: the zygote (:mod:`~bcoder_core.execution.zygote`) imports it, and
every module the zygote holds is copied into each program's process, which under gVisor costs CPU on
every fork (DESIGN §4).
"""

from __future__ import annotations

import json
import numbers
from typing import Any

MAX_DEPTH = 200


class Unencodable(Exception):
    """A value with no plain-data counterpart (a custom object, a function, a generator)."""


def _enc(v: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise Unencodable("nested too deeply")
    t = type(v)
    if v is None or t is bool or t is str or t is int or t is float:
        return v
    # Subclasses (a namedtuple, a Counter, numpy scalars) are taken by their plain value: whatever they
    # do, what reaches the parent is data with no behaviour, so a rigged __eq__ has nothing to act on.
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, str):
        return str.__str__(v)
    if isinstance(v, list):
        return [_enc(x, depth + 1) for x in list(v)]
    if isinstance(v, tuple):
        return {"t": [_enc(x, depth + 1) for x in tuple(v)]}
    if isinstance(v, dict):
        return {"d": [[_enc(k, depth + 1), _enc(x, depth + 1)] for k, x in dict(v).items()]}
    if isinstance(v, (set, frozenset)):
        return {"f" if isinstance(v, frozenset) else "s": [_enc(x, depth + 1) for x in list(v)]}
    if isinstance(v, bytes):
        return {"b": bytes(v).hex()}
    if isinstance(v, complex):
        return {"c": [float(v.real), float(v.imag)]}
    if t.__name__ == "ndarray" and hasattr(v, "tolist"):
        return _enc(v.tolist(), depth + 1)
    raise Unencodable(f"a value of type {t.__name__}")


def encode_value(v: Any) -> str:
    """``v`` as typed JSON text; :class:`Unencodable` when it is not plain data (or converting it raised)."""
    try:
        return json.dumps(_enc(v, 0), allow_nan=True)
    except Unencodable:
        raise
    except Exception as exc:  # RecursionError, a conversion the value itself made raise
        raise Unencodable(f"{type(exc).__name__} while encoding") from None


def encode_values(values: list[Any]) -> str:
    """The child's side of :func:`~bcoder_core.execution.checks.decode_values`: a value that is not
    plain data becomes a marker."""
    items = []
    for v in values:
        try:
            items.append(_enc(v, 0))
        except Unencodable as exc:
            items.append({"u": str(exc)[:100]})
        except Exception as exc:  # a conversion the value itself made raise
            items.append({"u": type(exc).__name__})
    return json.dumps(items, allow_nan=True)


def channel_line(nonce: str, kind: str, **fields: Any) -> bytes:
    """One line of the harness channel (read back by :func:`~bcoder_core.execution.protocol.parse_channel_line`)."""
    return (json.dumps({"nonce": nonce, "kind": kind, **fields}) + "\n").encode()
