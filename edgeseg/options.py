"""Typed ``KEY=VALUE`` options: the one parser behind ``convert --option`` (a toolchain's ``OPTIONS``)
and ``run --runtime-option`` (a runtime backend's ``OPTIONS``).

An extension declares ``OPTIONS = {"name": Option(type, help, default, choices)}``; a plain
``(type, help)`` tuple is accepted too. Values from a command line are strings and get typed
here; values from a profile or the Python API are typed already and are checked the same way,
so every consumer reads a bool as a bool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from .errors import EdgesegError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class Option(NamedTuple):
    type: type  # bool, int, float, str or list (comma-separated strings)
    help: str
    default: Any = None
    choices: tuple[str, ...] = ()


def as_option(spec: Option | tuple) -> Option:
    return spec if isinstance(spec, Option) else Option(*spec)


def describe(options: Mapping[str, Option | tuple]) -> str:
    """``key=type (help)`` for each option, on one line (error messages)."""
    parts = []
    for k, spec in options.items():
        o = as_option(spec)
        kind = "|".join(o.choices) if o.choices else o.type.__name__
        parts.append(f"{k}={kind} ({o.help})")
    return "; ".join(parts)


def coerce(value: Any, opt: Option | tuple) -> Any:
    """``value`` as the option's type; ValueError when it cannot be."""
    o = as_option(opt)
    if o.type is bool:
        if isinstance(value, bool):
            out: Any = value
        elif str(value).strip().lower() in TRUE + FALSE:
            out = str(value).strip().lower() in TRUE
        else:
            raise ValueError(value)
    elif o.type is list:
        out = [str(v).strip() for v in value] if isinstance(value, (list, tuple)) else \
            [v.strip() for v in str(value).split(",") if v.strip()]
    elif o.type is str:
        if isinstance(value, (list, dict)):
            raise ValueError(value)
        out = str(value).strip()
    else:
        if isinstance(value, bool):
            raise ValueError(value)
        out = o.type(value.strip() if isinstance(value, str) else value)
    if o.choices and out not in o.choices:
        raise ValueError(value)
    return out


def split_pairs(pairs: Iterable[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` strings -> {key: raw value}; a string without ``=`` is refused."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise EdgesegError(f"{flag} {pair}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse(values: Mapping[str, Any] | Iterable[str], allowed: Mapping[str, Option | tuple], *, flag: str,
          owner: str) -> dict[str, Any]:
    """Check and type ``values`` (``KEY=VALUE`` strings or a mapping) against ``allowed``.

    ``owner`` names what takes the options in the message ("the mnn runtime", "target 'rknn'").
    Every key is checked before any is used, and a wrong one lists all the valid ones.
    """
    raw = dict(values) if isinstance(values, Mapping) else split_pairs(values, flag)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            raise EdgesegError(f"{flag} {key}: not an option of {owner}; {owner} takes "
                               + (f"KEY=VALUE with KEY one of: {describe(allowed)}" if allowed else "no options"))
        o = as_option(allowed[key])
        try:
            out[key] = coerce(value, o)
        except (ValueError, TypeError):
            want = " or ".join(o.choices) if o.choices else f"a {o.type.__name__}"
            raise EdgesegError(f"{flag} {key}={value}: {key} takes {want}") from None
    return out


def defaults(allowed: Mapping[str, Option | tuple]) -> dict[str, Any]:
    return {k: as_option(o).default for k, o in allowed.items()}
