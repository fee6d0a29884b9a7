"""One field of a COPY text or CSV line, read as PostgreSQL's CopyReadAttributesText and
CopyReadAttributesCSV read it: the raw text (what the NULL string is compared with) and the value
(text: backslash escapes undone; CSV: quotes removed)."""

from __future__ import annotations

import re

__all__ = ["FieldError", "csv_field", "nth_field", "text_field", "text_value"]

BAD_COPY_FILE_FORMAT = "22P04"
_SIMPLE_ESCAPES = {ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r",
                   ord("t"): b"\t", ord("v"): b"\v"}
_TEXT_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.S)
_PATTERNS: dict[tuple[bytes, int], re.Pattern[bytes]] = {}


class FieldError(Exception):
    """The line lacks the field (`message` None: the caller names the column), or has an
    unterminated quote."""

    def __init__(self, message: str | None):
        super().__init__(message)
        self.sqlstate = BAD_COPY_FILE_FORMAT
        self.message = message


def nth_field(line: bytes, delim: bytes, k: int) -> bytes | None:
    """Field k of a line with no escapes or quotes; None when the line has fewer fields."""
    if k == 0:
        return line.partition(delim)[0]
    parts = line.split(delim, k + 1)
    return parts[k] if len(parts) > k else None


def text_field(line: bytes, delim: bytes, k: int) -> bytes | None:
    """The raw text of field k of a text-format line (a backslash escapes the next byte, the
    delimiter included); None when the line has fewer fields."""
    head = line.partition(b"\\")[0]
    if len(head) == len(line):
        return nth_field(line, delim, k)
    parts = head.split(delim, k + 1)
    if len(parts) > k + 1:  # field k ends before the first backslash
        return parts[k]
    tokens = _pattern(rb"\\.|" + re.escape(delim), re.S)
    start, field = 0, 0
    for m in tokens.finditer(line):
        if m.end() - m.start() == 1:  # an unescaped delimiter
            if field == k:
                return line[start : m.start()]
            field += 1
            start = m.end()
    return line[start:] if field == k else None


def text_value(raw: bytes) -> bytes:
    """A text-format field's value: \\b \\f \\n \\r \\t \\v, octal \\NNN, hex \\xHH, any other byte
    after a backslash stands for itself; a backslash at the very end of the data is dropped."""
    if b"\\" not in raw:
        return raw
    if (len(raw) - len(raw.rstrip(b"\\"))) % 2:
        raw = raw[:-1]
    return _TEXT_ESCAPE.sub(_unescape, raw)


def csv_field(line: bytes, delim: bytes, quote: int, escape: int, k: int) -> tuple[bytes, bytes, bool]:
    """Field k of a CSV line: (value, raw text, whether any part of it was quoted). Inside quotes
    the escape byte (by default the quote itself) makes a following quote or escape literal;
    quotes may open and close anywhere in a field. FieldError when the line has fewer fields
    or a quote is not closed."""
    q = bytes([quote])
    head = line.partition(q)[0]
    if len(head) < len(line):  # fast answer when field k ends before the first quote
        parts = head.split(delim, k + 1)
        if len(parts) > k + 1:
            return parts[k], parts[k], False
    elif (plain := nth_field(line, delim, k)) is not None:
        return plain, plain, False
    outside = _pattern(b"[" + re.escape(q) + re.escape(delim) + b"]")
    inside = _pattern(b"[" + re.escape(q) + re.escape(bytes([escape])) + b"]")
    pos, n = 0, len(line)
    for field in range(k + 1):
        start, out, quoted, found_delim = pos, bytearray(), False, False
        while True:
            m = outside.search(line, pos)
            if m is None:
                out += line[pos:]
                end = pos = n
                break
            j = m.start()
            out += line[pos:j]
            if line[j] != quote:  # the delimiter
                end, pos, found_delim = j, j + 1, True
                break
            quoted, pos = True, j + 1
            pos = _quoted_part(line, pos, quote, escape, inside, out)
        if field < k and not found_delim:
            raise FieldError(None)
    return bytes(out), line[start:end], quoted


def _quoted_part(line: bytes, pos: int, quote: int, escape: int, inside: re.Pattern[bytes],
                 out: bytearray) -> int:
    n = len(line)
    while True:
        m = inside.search(line, pos)
        if m is None:
            raise FieldError("unterminated CSV quoted field")
        j = m.start()
        out += line[pos:j]
        c = line[j]
        if c == escape and j + 1 < n and line[j + 1] in (escape, quote):
            out.append(line[j + 1])
            pos = j + 2
        elif c == quote:
            return j + 1
        else:
            out.append(c)
            pos = j + 1


def _pattern(source: bytes, flags: int = 0) -> re.Pattern[bytes]:
    pattern = _PATTERNS.get((source, flags))
    if pattern is None:
        pattern = _PATTERNS[(source, flags)] = re.compile(source, flags)
    return pattern


def _unescape(m: re.Match[bytes]) -> bytes:
    octal, hexa, other = m.groups()
    if octal:
        return bytes([int(octal, 8) & 0xFF])
    if hexa:
        return bytes([int(hexa, 16)])
    return _SIMPLE_ESCAPES.get(other[0], other)
