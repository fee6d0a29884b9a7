"""The ``query_logger`` built-in: one line per finished statement.

Text format (fields separated by spaces, the SQL last so it can hold anything)::

    2024-05-01T12:34:56.789+02:00 db=app user=alice client=127.0.0.1:50312 duration=0.412ms
    rows=1 sqlstate=- host=127.0.0.1:5432 sql=SELECT 1

(one line in the file). With ``parameters = true`` a ``params=[...]`` field (a JSON array)
comes just before ``sql=``. JSON format: one object per line with the keys ``time``,
``database``, ``user``, ``client``, ``duration_us``, ``rows``, ``sqlstate``, ``host``,
``role``, ``sql`` and, with ``parameters = true``, ``parameters``.

In the text format, a backslash, newline, carriage return or other control character in a
value is written as ``\\\\``, ``\\n``, ``\\r`` or ``\\xNN``, so every statement is one line.
Writing never raises into the proxy: a failing write is logged once at WARNING (again after a
write succeeded) and the line is lost.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, TextIO

from ..api import QueryDone

if TYPE_CHECKING:
    from ...config.models import QueryLoggerHook

__all__ = ["QueryLogger", "parameter_values"]

log = logging.getLogger(__name__)

# Control characters (tab aside) and the backslash, escaped so that a value stays on its line.
_ESCAPES = {c: f"\\x{c:02x}" for c in range(0x20) if c != 0x09}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x5C: "\\\\", 0x7F: "\\x7f"})


_str = json.JSONEncoder(ensure_ascii=False).encode  # one JSON string


def _escape(text: str) -> str:
    return text.translate(_ESCAPES)


def parameter_values(
    parameters: tuple[bytes | None, ...], formats: tuple[int, ...]
) -> list[str | None]:
    """Bind values as text: text-format values decoded as UTF-8 (bad bytes replaced),
    binary-format values as ``\\x`` + hex, NULL as None.

    ``formats`` follows Bind's rules: none means all text, one applies to every value.
    """
    values: list[str | None] = []
    for i, value in enumerate(parameters):
        if value is None:
            values.append(None)
            continue
        if not formats:
            fmt = 0
        elif len(formats) == 1:
            fmt = formats[0]
        else:
            fmt = formats[i] if i < len(formats) else 0
        values.append("\\x" + value.hex() if fmt == 1 else value.decode("utf-8", "replace"))
    return values


class _Clock:
    """ISO 8601 local time with milliseconds; the date, time and UTC offset are formatted
    once per second (datetime formatting costs more than the rest of a log line)."""

    def __init__(self) -> None:
        self._second = -1
        self._head = self._offset = ""

    def now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            stamp = datetime.datetime.fromtimestamp(second).astimezone().isoformat()
            self._second, self._head, self._offset = second, stamp[:19], stamp[19:]
        return f"{self._head}.{int((t - second) * 1000):03d}{self._offset}"


_now = _Clock().now


class QueryLogger:
    """Writes one line per statement at post_query, to a file or to standard error."""

    def __init__(self, config: QueryLoggerHook, base_dir: str | None = None) -> None:
        self._json = config.format == "json"
        self._parameters = config.parameters
        self._path: str | None = None
        if config.path is not None:
            path = os.path.expanduser(config.path)
            self._path = os.path.abspath(os.path.join(base_dir, path) if base_dir else path)
        self._file: TextIO | None = None
        self._failing = False  # a failure was logged; log the next one only after a success
        self._closed = False
        if self._path is not None:
            self._open()

    @property
    def path(self) -> str | None:
        """The absolute path written to, or None for standard error."""
        return self._path

    def _open(self) -> TextIO | None:
        assert self._path is not None
        try:
            # Line-buffered: each statement reaches the file as one write.
            self._file = open(  # noqa: SIM115 - kept open until close()
                self._path, "a", buffering=1, encoding="utf-8", errors="backslashreplace"
            )
        except OSError as exc:
            self._failed(exc)
            self._file = None
        return self._file

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            where = self._path or "standard error"
            log.warning("hooks.query_logger: cannot write to %s: %s; statements are not logged", where, exc)

    def post_query(self, done: QueryDone) -> None:
        if self._closed:
            return
        line = self._json_line(done) if self._json else self._text_line(done)
        try:
            if self._path is None:
                out: TextIO | None = sys.stderr
            else:
                # A file that could not be opened is tried again for each statement.
                out = self._file or self._open()
            if out is None:
                return
            out.write(line)
            if self._path is None:
                out.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed under us
            self._failed(exc)
            return
        self._failing = False

    def _text_line(self, done: QueryDone) -> str:
        fields = [
            _now(),
            f"db={_escape(done.database)}",
            f"user={_escape(done.user)}",
            f"client={_escape(done.client_addr)}",
            f"duration={done.duration_us / 1000:.3f}ms",
            f"rows={done.rows}",
            f"sqlstate={done.sqlstate or '-'}",
            f"host={_escape(done.host)}",
        ]
        if self._parameters:
            values = parameter_values(done.parameters, done.parameter_formats)
            # JSON already keeps it on one line (and has its own escapes).
            fields.append("params=" + json.dumps(values, ensure_ascii=False))
        fields.append(f"sql={_escape(done.sql)}\n")
        return " ".join(fields)

    def _json_line(self, done: QueryDone) -> str:
        # Written out by hand: json.dumps of a dict costs twice as much, and this runs per statement.
        line = (f'{{"time": "{_now()}", "database": {_str(done.database)}, "user": {_str(done.user)}, '
                f'"client": {_str(done.client_addr)}, "duration_us": {done.duration_us:d}, '
                f'"rows": {done.rows:d}, "sqlstate": {_str(done.sqlstate)}, "host": {_str(done.host)}, '
                f'"role": {_str(done.role)}, "sql": {_str(done.sql)}')
        if self._parameters:
            values = parameter_values(done.parameters, done.parameter_formats)
            line += ', "parameters": ' + json.dumps(values, ensure_ascii=False)
        return line + "}\n"

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                self._failed(exc)
