"""The package's one ``key=value`` parser (``--set``, ``--config``, ``--model-arg``).

Its rule: the value is read as a Python literal (numbers, quoted strings,
``None``/``True``/``False``, lists, tuples, dicts); JSON's ``null``/``true``/``false`` are
understood too; anything else is kept as the text. When the settings object is known, each
value is then coerced to the type of the field's current value (a list becomes a tuple for a
tuple field, an int a float for a float field, ``yes``/``no``/``1``/``0`` a bool) and a value
of another type is refused. :mod:`transcam_nb.config` re-exports these names.
"""
from __future__ import annotations

import ast
import dataclasses
from typing import Any, Sequence

from .errors import InputError

__all__ = ["OverrideError", "parse_value", "parse_overrides"]


class OverrideError(InputError):
    """A ``key=value`` override that names no field or holds a value of the wrong type."""


_JSON_WORDS = {"null": None, "true": True, "false": False}
_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_value(text: str) -> Any:
    """A Python literal (JSON's ``null``/``true``/``false`` too), else the text itself."""
    text = text.strip()
    if text in _JSON_WORDS:
        return _JSON_WORDS[text]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _coerce(key: str, val: Any, cur: Any, option: str, text: str) -> Any:
    if isinstance(cur, bool):
        if isinstance(val, str) and val.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[val.lower()]
        if isinstance(val, int) and val in (0, 1):
            return bool(val)
    elif isinstance(cur, float) and isinstance(val, int) and not isinstance(val, bool):
        return float(val)
    elif isinstance(cur, tuple) and isinstance(val, list):
        return tuple(val)
    elif cur is None and isinstance(val, list):
        return tuple(val)  # tuple-or-None fields (jitter, ...)
    if cur is not None and val is not None and not isinstance(val, type(cur)) and not (
            isinstance(cur, float) and isinstance(val, (int, float)) and not isinstance(val, bool)):
        raise OverrideError(f"{option} {key}={text!r}: expected {type(cur).__name__} (like {cur!r})")
    return val


def parse_overrides(items: Sequence[str] | None, settings: Any = None, option: str = "--set") -> dict:
    """``["lr=1e-4", "resize_long=[256,512]", "jitter=None"]`` → ``{name: value}``.

    Values follow :func:`parse_value`. With ``settings`` (a :class:`Settings` instance), keys
    are checked against its fields (``-`` may stand for ``_``) and values are coerced to the
    type of the current value (the module docstring's rule). Raises :class:`OverrideError` (a
    ``ValueError``) naming the option and what was expected.
    """
    known = None if settings is None else {f.name for f in dataclasses.fields(settings)}
    out: dict = {}
    for it in items or []:
        if "=" not in it:
            raise OverrideError(f"{option} expects KEY=VALUE, got {it!r}")
        key, text = (t.strip() for t in it.split("=", 1))
        if not key:
            raise OverrideError(f"{option} expects KEY=VALUE, got {it!r}")
        val = parse_value(text)
        if known is not None:
            key = key.replace("-", "_")
            if key not in known:
                raise OverrideError(f"{option} {key}: not a {getattr(settings, '_what', 'setting')} field; known fields: "
                                    f"{', '.join(sorted(known))}")
            val = _coerce(key, val, getattr(settings, key), option, text)
        out[key] = val
    return out
