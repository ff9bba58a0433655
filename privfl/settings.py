"""Flat, validated settings: the one home for parsing keys, types and ranges.

Both the experiment configuration (written by whoever runs the federation) and an
owner's policy (written by the institution that holds the data) are flat mappings of
dashed keys (``noise-multiplier = 1.0``), read from TOML files, Flower's run config or
a SuperNode's node config.  Both must refuse what they cannot vouch for in the same
way: an unknown key with a suggestion, a value of the wrong type, a value out of
range, a required key left out.  A settings class is a frozen dataclass whose fields
are declared with :func:`setting`; :func:`load_settings` builds one from a mapping.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from typing import Any, TypeVar

T = TypeVar("T")
Check = Callable[[Any], "str | None"]


class SettingsError(ValueError):
    """A setting is missing, unknown, mistyped or out of range; the message names it."""


def setting(default: Any, help: str, check: Check | None = None, *, kind: type | None = None,
            required: str | None = None) -> Any:
    """Declare one setting.

    ``kind`` is the expected type (default: the type of ``default``; ``tuple`` means a
    list of strings).  ``required`` makes the key mandatory: its text is the error
    shown when the key is missing (say what to add and why).
    """
    expected = kind or type(default)
    return field(default=default, metadata={"help": help, "check": check, "kind": expected,
                                            "required": required})


def key_of(field_name: str) -> str:
    return field_name.replace("_", "-")


def validate(instance: Any) -> None:
    """Run every field's check (call from ``__post_init__``); raise SettingsError naming the key."""
    for f in fields(instance):
        value = getattr(instance, f.name)
        if value is None and f.metadata.get("required"):
            continue  # reported by load_settings, which knows the source
        check = f.metadata.get("check")
        message = check(value) if check and value is not None else None
        if message:
            raise SettingsError(f"{key_of(f.name)} = {_show(value)}: {message}")


def load_settings(cls: type[T], mapping: Mapping[str, Any], *, source: str,
                  error: type[SettingsError] = SettingsError) -> T:
    """Build ``cls`` from dashed keys; keys not given take their defaults."""
    known = {key_of(f.name): f for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, raw in mapping.items():
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise error(f"{source}: unknown key '{key}'{suggestion}; known keys: {', '.join(known)}")
        f = known[key]
        values[f.name] = coerce(key, raw, f.metadata["kind"], source, error)
    for key, f in known.items():
        if f.metadata.get("required") and values.get(f.name, f.default) is None:
            raise error(f"{source}: {f.metadata['required']}")
    try:
        return cls(**values)
    except SettingsError as err:
        raise error(f"{source}: {err}") from None


def coerce(key: str, raw: Any, expected: type, source: str, error: type[SettingsError] = SettingsError) -> Any:
    """Accept a value only when it means what the setting expects (no silent casts)."""
    if expected is bool:
        if isinstance(raw, bool):
            return raw
    elif expected is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
    elif expected is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
            return float(raw)
    elif expected is str:
        if isinstance(raw, str):
            return raw
    elif expected is tuple:
        # A list of strings: a TOML array, or (Flower's node config has scalars only) a
        # comma-separated string.
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(raw, (list, tuple)) and all(isinstance(v, str) for v in raw):
            return tuple(raw)
        raise error(f"{source}: {key} = {raw!r}: expected a list of strings (or one comma-separated string)")
    raise error(f"{source}: {key} = {raw!r} has type {type(raw).__name__}; expected {expected.__name__}")


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """(key, default, help) for every setting, for ``--help`` and docs."""
    return [(key_of(f.name), _default(f), f.metadata["help"]) for f in fields(cls)]


def to_mapping(instance: Any) -> dict[str, Any]:
    """Dashed keys (lists as lists), ready for a TOML file or Flower's run config."""
    return {key_of(f.name): (list(v) if isinstance(v := getattr(instance, f.name), tuple) else v)
            for f in fields(instance)}


def _default(f: Field) -> Any:
    return None if f.default is MISSING else f.default


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


# ---- checks shared by settings classes ------------------------------------------------


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def probability_delta(value: float) -> str | None:
    # delta is the probability that the epsilon guarantee fails outright; at 1 or
    # above there is no guarantee, and it should sit well below 1/n of the records.
    from privfl.privacy.budget import check_delta  # the one home of 0 < delta < 1

    try:
        check_delta(value)
    except ValueError:
        return "must be in (0, 1), and should be well below 1/n"
    return None


def one_of(choices: tuple[str, ...]) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def each_one_of(choices: tuple[str, ...]) -> Check:
    def check(values: tuple[str, ...]) -> str | None:
        bad = [v for v in values if v not in choices]
        return None if not bad else f"{', '.join(bad)} not among {', '.join(choices)}"

    return check


def toml_value(value: Any) -> str:
    """One value as TOML (strings quoted and escaped, lists of scalars)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return repr(value)


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string that ``tomllib`` reads back unchanged, whatever it holds.

    TOML forbids raw control characters (U+0000-U+001F, U+007F) and has no surrogate escapes,
    so JSON's escaping (``\\ud83d\\ude00`` for an emoji) is not TOML: escape only quote,
    backslash and control characters, write every other character as itself (UTF-8).
    """
    out = []
    for char in text:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            raise SettingsError(f"{text!r} is not valid Unicode text (it holds a lone surrogate, e.g. bytes that "
                                "were not UTF-8)")
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_dumps(values: Mapping[str, Any]) -> str:
    """A flat mapping as TOML, one ``key = value`` line each."""
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items())
