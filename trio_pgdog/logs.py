"""The proxy's own log: level names as operators type them, and a text or JSON line format.

Logging starts before the configuration is read (so that its errors are logged), in the
text format; `use_format` switches to `[general] log_format` once the configuration is known,
and again when a reload changes it.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys

__all__ = ["LEVELS", "JsonFormatter", "parse_level", "setup", "use_format"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The one handler the proxy installs on the root logger; its formatter follows log_format.
_handler: logging.Handler | None = None


def parse_level(text: str) -> str | None:
    """`text` as a level name ("debug", "Info", "WARNING"...), or None if it is not one."""
    level = text.strip().upper()
    return level if level in LEVELS else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, and exc_info
    (the traceback's text) when the record carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
                    .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def setup(level: str, log_format: str = "text") -> None:
    """Log records of `level` and above to standard error, in `log_format`."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(_formatter(log_format))
    root.addHandler(_handler)
    root.setLevel(level)


def use_format(log_format: str) -> None:
    """Switch the line format of the handler `setup` installed (nothing if it was not)."""
    if _handler is not None:
        _handler.setFormatter(_formatter(log_format))
