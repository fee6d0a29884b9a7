"""SET key = value on the admin console: [general] settings that can change while running.

A change is applied as a reload applies a new configuration (pools whose settings changed
are replaced, the others keep their connections); the files are not written, so the next
RELOAD or SIGHUP goes back to what they say.
"""

from __future__ import annotations

import attrs

from ..config.errors import InvalidValue
from ..config.models import Config, General
from ..protocol import errors as codes
from .commands import AdminError

# Keys that need a restart: the listening sockets, the processes and the node identity.
FIXED = frozenset(("host", "port", "workers", "node_id", "two_phase_journal_dir",
                   "openmetrics_port", "openmetrics_host"))
CHANGEABLE = frozenset(f.name for f in attrs.fields(General)) - FIXED

_TRUE, _FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


def with_setting(config: Config, key: str, text: str) -> Config:
    """`config` with [general] `key` set from `text`; AdminError if it cannot be."""
    fields = attrs.fields_dict(attrs.resolve_types(General))  # types as classes, not text
    if key not in fields:
        raise AdminError(codes.UNDEFINED_OBJECT, f"unknown setting {key!r} (SHOW CONFIG lists them)")
    if key not in CHANGEABLE:
        raise AdminError(codes.CANT_CHANGE_RUNTIME_PARAM,
                         f"{key} cannot change while the proxy runs: set it in pgdog.toml and restart")
    value = _convert(key, fields[key].type, text)
    try:
        return attrs.evolve(config, general=attrs.evolve(config.general, **{key: value}))
    except InvalidValue as exc:
        raise AdminError(codes.INVALID_PARAMETER_VALUE, f"{key} {exc.message}") from None


def _convert(key: str, kind: object, text: str) -> object:
    if kind is bool:
        lowered = text.lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise AdminError(codes.INVALID_PARAMETER_VALUE, f"{key} takes true or false, got {text!r}")
    if kind in (int, int | None):
        try:
            return int(text)
        except ValueError:
            raise AdminError(codes.INVALID_PARAMETER_VALUE,
                             f"{key} takes a whole number, got {text!r}") from None
    return text
