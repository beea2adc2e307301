"""Stage commands built from their config dataclass: one place for each setting's default and help.

A stage command (``bcoder sample``, ``annotate``, ``rank``, ``execute``, ``evaluate``) takes

- its inputs and output as options (``--model``, ``--problems``, ``--out`` ...: :class:`Param`),
- a flag per setting (``--num-samples``, ``--temperature`` ...: :class:`Flag`), whose default and
  help text come from the config dataclass (the field's default and its docstring),
- ``--config FILE`` (YAML of the config's keys), ``key=value`` overrides, and ``--show-config``.

A flag wins over an override, which wins over the file, which wins over the defaults (the loader,
:func:`bcoder_core.config.load_config`, checks every key and names it in its one-line errors).
The flags are the public interface and keep their names; the pipeline and the cluster workflow
render settings as ``key=value`` overrides instead, from the same dataclasses.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import typer

_UNSET: Any = object()
"""Marks a :class:`Flag` that is not a switch."""

_CONFIG_HELP = "YAML file of this command's settings (the keys `--show-config` lists)."
_OVERRIDES_HELP = "Settings as key=value (values parsed as YAML scalars), applied after --config."


@dataclasses.dataclass(frozen=True)
class Flag:
    """A command-line flag that sets one config field."""

    field: str
    """The config field (dotted for nested ones)."""
    names: tuple[str, ...] = ()
    """Flag spellings; default ``--field-name``."""
    parse: Callable[[str], Any] | None = None
    """Turns the flag's text into the field's value (e.g. ``"1,5"`` → ``[1, 5]``); None: typed by the field."""
    sets: Any = _UNSET
    """For a switch such as ``--no-ground-truth``: the value the field takes when the switch is given."""
    help: str | None = None
    """Help text; default: the field's docstring."""


@dataclasses.dataclass(frozen=True)
class Param:
    """An option that is not a setting: an input, an output, a shard, a progress switch."""

    name: str
    """Keyword the run function receives."""
    names: tuple[str, ...]
    """Flag spellings."""
    help: str
    """Help text."""
    required: bool = False
    """Checked after ``--show-config`` (so that ``--show-config`` alone works)."""
    default: Any = None
    """Value when not given."""
    type: Any = str
    """Python type for typer (``str``, ``bool``, ``int``)."""
    secondary: str | None = None
    """For a bool: the negative spelling (``--no-progress``)."""


def _field_types(cls: type) -> dict[str, tuple[Any, Any, str]]:
    """dotted field → (type, default, doc) for every leaf field of ``cls``."""
    from bcoder_core.config import field_default, field_docs

    out: dict[str, tuple[Any, Any, str]] = {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        default = field_default(f)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update({f"{f.name}.{k}": v for k, v in _field_types(tp).items()})
        else:
            out[f.name] = (tp, default, docs.get(f.name, ""))
    return out


def _annotation(tp: Any) -> Any:
    """The type typer parses a flag of a config field with (Literal fields become choices)."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is Literal or tp in (int, float, str, bool):
        return tp
    if len(args) == 1 and origin is not list:  # X | None
        return _annotation(args[0])
    return str


def _with_primary(flag: Flag, spelling: str) -> Flag:
    """``flag`` with ``spelling`` as its first name (its other names stay as aliases)."""
    return dataclasses.replace(flag, names=(spelling, *(n for n in flag.names if n != spelling)))


def _blame_flag(exc: Exception, values: dict[str, Any], flags: Any) -> Exception:
    """The loader's error about a key a flag set, told in terms of the flag (``--top-p must ...``)."""
    from bcoder_core.errors import ConfigError

    msg = str(exc)
    for flag in flags:
        head = f"<override>: {flag.field} "
        if flag.field in values and msg.startswith(head):
            return ConfigError(f"{flag.names[0]} {msg[len(head) :]}")
    return exc


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def stage_command(
    cls: type,
    run: Callable[..., None],
    *,
    params: Sequence[Param],
    flags: Sequence[Flag] = (),
    doc: str,
    name: str,
) -> Callable[..., None]:
    """A typer command whose options are ``params`` + a flag per entry of ``cls.CLI_FLAGS`` + --config.

    ``flags`` refine or add flags (an alias such as ``-m``, a parser, a switch); the flag of a field
    in ``cls.CLI_FLAGS`` keeps that spelling first. ``run(cfg, **params)`` is called with the
    resolved config and the params' values.
    """
    refined = {f.field: f for f in flags}
    all_flags = [
        _with_primary(refined.pop(key, Flag(key)), spelling)
        for key, spelling in getattr(cls, "CLI_FLAGS", {}).items()
    ] + list(refined.values())
    fields = _field_types(cls)
    sig: list[inspect.Parameter] = []
    annotations: dict[str, Any] = {}
    for p in params:
        if p.type is bool:
            decl = (f"{p.names[0]}/{p.secondary}",) if p.secondary else p.names
            opt = typer.Option(p.default, *decl, help=p.help)
        else:
            helptext = f"{p.help} [required]" if p.required else p.help
            opt = typer.Option(p.default, *p.names, help=helptext, show_default=p.default is not None)
        sig.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=opt))
        annotations[p.name] = p.type if p.type is bool else p.type | None
    flag_params: dict[str, Flag] = {}
    for flag in all_flags:
        tp, default, fdoc = fields[flag.field]
        pname = "flag_" + flag.field.replace(".", "__")
        names = flag.names or ("--" + flag.field.split(".")[-1].replace("_", "-"),)
        helptext = flag.help or fdoc
        if flag.sets is not _UNSET:
            opt = typer.Option(False, *names, help=helptext, show_default=False)
            annotations[pname] = bool
        else:
            opt = typer.Option(None, *names, help=helptext, show_default=_default_text(default))
            annotations[pname] = (str if flag.parse else _annotation(tp)) | None
        sig.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=opt))
        flag_params[pname] = flag
    sig += [
        inspect.Parameter(
            "overrides",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Argument(None, help=_OVERRIDES_HELP, show_default=False),
        ),
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", help=_CONFIG_HELP, show_default=False),
        ),
        inspect.Parameter(
            "show_config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                False,
                "--show-config",
                help="Print the resolved settings with each key's documentation and exit.",
            ),
        ),
    ]
    annotations.update(overrides=list[str] | None, config=Path | None, show_config=bool)

    def command(**kwargs: Any) -> None:
        from bcoder_core.config import describe_config, load_config
        from bcoder_core.errors import BcoderError, ConfigError

        values: dict[str, Any] = {}
        for pname, flag in flag_params.items():
            given = kwargs.pop(pname)
            if flag.sets is not _UNSET:
                if given:
                    values[flag.field] = flag.sets
            elif given is not None:
                values[flag.field] = flag.parse(given) if flag.parse else given
        overrides = kwargs.pop("overrides") or []
        config_file = kwargs.pop("config")
        try:
            cfg = load_config(cls, config_file, overrides, values)
        except ConfigError as exc:
            raise _blame_flag(exc, values, flag_params.values()) from None
        if kwargs.pop("show_config"):
            typer.echo(describe_config(cls, cfg))
            return
        for p in params:
            if p.required and kwargs.get(p.name) is None:
                raise BcoderError(f"{name}: {p.names[0]} is required")
        run(cfg, **kwargs)

    command.__signature__ = inspect.Signature(sig)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    command.__doc__ = doc
    command.__name__ = name.replace("-", "_")
    return command
