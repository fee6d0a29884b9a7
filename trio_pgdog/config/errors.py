"""The one exception the configuration loader raises, and how models report bad values."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration file could not be used.

    ``str(err)`` is one line meant for an operator, e.g.
    ``pgdog.toml: line 3: [general] unknown key 'prot'``. The parts are kept as
    attributes too, so that a caller (the admin console, a reload) can show them
    differently.
    """

    def __init__(self, file: str, message: str, *, line: int | None = None) -> None:
        self.file = file
        self.message = message
        self.line = line
        where = f"{file}: line {line}" if line is not None else file
        super().__init__(f"{where}: {message}")


class InvalidValue(ValueError):
    """Raised by model validators; carries the attribute name.

    cattrs annotates type errors with the attribute they belong to, but errors
    raised from ``__init__`` (where attrs runs validators) arrive without one, so
    the validator names the key itself.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key!r}: {message}")
