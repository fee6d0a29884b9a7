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
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s [%(worker)s] %(name)s: %(message)s"

# The one handler the proxy installs on the root logger; its formatter follows log_format.
_handler: logging.Handler | None = None
_format = "text"
_worker: str | None = None  # this process is one of several workers (workers.py)


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
        worker = getattr(record, "worker", None)
        if worker is not None:
            entry["worker"] = worker
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT if _worker is None else WORKER_TEXT_FORMAT)


def setup(level: str, log_format: str = "text") -> None:
    """Log records of `level` and above to standard error, in `log_format`."""
    global _handler, _format
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _format = log_format
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(_formatter(log_format))
    root.addHandler(_handler)
    root.setLevel(level)


class _WorkerName(logging.Filter):
    """Gives each record the worker's name (workers.py), for the formats to show."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.worker = name

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def set_worker(name: str) -> None:
    """Every line this process logs from now on names the worker (`[worker 1] trio_pgdog: ...`;
    in JSON a "worker" field)."""
    global _worker
    _worker = name
    if _handler is not None:
        _handler.addFilter(_WorkerName(name))
        _handler.setFormatter(_formatter(_format))


def use_format(log_format: str) -> None:
    """Switch the line format of the handler `setup` installed (nothing if it was not)."""
    global _format
    _format = log_format
    if _handler is not None:
        _handler.setFormatter(_formatter(log_format))
