"""Splitting `COPY ... FROM STDIN` across shards, sans-IO: CopyData payloads in, for each shard
the bytes to send it out, each row sent unchanged to the shard its key belongs to.

Rows are found the way PostgreSQL's COPY FROM finds them (copyfromparse.c), so that every shard
reads exactly the rows PostgreSQL would have read from the whole stream:

- text: rows end at `\\n`, `\\r\\n` or `\\r`, whichever the first line uses (another ending later
  is an error, as in PostgreSQL); a backslash escapes the next byte, a newline included; `\\.`
  ends the data and whatever follows it is ignored. The key field is unescaped before it is
  read; it is NULL when its raw text is the NULL string (`\\N`).
- CSV: the same row endings outside quotes; quoted fields may hold delimiters and newlines; `\\.`
  alone on a line ends the data; an unquoted field equal to the NULL string (empty) is NULL,
  with FORCE_NOT_NULL / FORCE_NULL on the key column applied as PostgreSQL applies them.
- binary: the signature, flags and header extension go to every shard, then each tuple (field
  count, then each field's length and bytes) goes whole to its shard; the trailer goes to every
  shard.
A HEADER line goes to every shard (each checks it under HEADER MATCH).

Memory: the splitter keeps only the incomplete row at the end of what it was fed; `feed` returns
each shard's rows from that payload, batched into one bytes object per shard.

Speed: complete lines with nothing unusual in them are split with `bytes.split` and their keys
read and hashed in bulk; text lines with a `\\.` or a backslash before the row ending, CSV lines
with an end marker or (with an ESCAPE other than the quote) a quote, and stray carriage returns
or newlines go through the exact scanner, a transcription of PostgreSQL's line reader (CSV
quotes that span lines are joined by counting quotes, which is what that reader does when the
escape is the quote). tests/test_sharding_copy.py holds the two paths to the same answers.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

from .copy_fields import FieldError, csv_field, text_field, text_value
from .copy_keys import BadKey, KeyType, key_type
from .copy_statement import CopySplitError, CopyStatement, is_utf8
from .hashing import bytes_key_hash, int_key_hash

__all__ = ["BINARY_SIGNATURE", "BINARY_TRAILER", "CopySplitError", "CopySplitter"]

FEATURE_NOT_SUPPORTED = "0A000"
BAD_COPY_FILE_FORMAT = "22P04"
BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
BINARY_TRAILER = b"\xff\xff"
NL, CR, BACKSLASH, DOT = 0x0A, 0x0D, 0x5C, 0x2E
# Row endings (PostgreSQL's eol_type, set by the first line).
EOL_NL, EOL_CR, EOL_CRNL = b"\n", b"\r", b"\r\n"
_CRNL_STRAY = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_NEED_MORE = None  # a scanner's answer when the line is not complete yet
# What sends a block of lines to the line-by-line path: a bad or NULL key, a missing field...
_NOT_BULK = (ValueError, TypeError, OverflowError, IndexError, BadKey)


class CopySplitter:
    """Routes the rows of one `COPY t (columns) FROM STDIN` to `shards` shards by the field at
    `key_index` (0-based, in the COPY's column order).

    `feed(payload)` takes each CopyData payload as it arrives and returns {shard: [bytes]} to send
    (only shards with something to send; one bytes object each); `finish()` at CopyDone returns
    what is left. Both raise CopySplitError for data PostgreSQL would refuse in a way that decides
    where rows go (a key that is not a valid value of its type, a row without the key field,
    inconsistent row endings, a malformed binary header...); after an error the splitter stays
    failed. Errors PostgreSQL finds elsewhere in a row are left to the shard that receives it.
    """

    def __init__(self, *, shards: int, key_index: int, data_type: str, format: str = "text",
                 delimiter: str | None = None, null: str | None = None, quote: str | None = None,
                 escape: str | None = None, header: bool = False, encoding: str = "UTF8",
                 force_not_null: bool = False, force_null: bool = False, default: str | None = None,
                 on_error: str | None = None, column_count: int | None = None,
                 table: str | None = None, key_column: str | None = None):
        if shards < 1 or key_index < 0:
            raise ValueError("shards must be at least 1 and key_index at least 0")
        if format not in ("text", "csv", "binary"):
            raise ValueError(f"unknown COPY format {format!r}")
        if not is_utf8(encoding):
            raise CopySplitError(
                FEATURE_NOT_SUPPORTED, f'COPY into a sharded table needs UTF8 data, not "{encoding}"',
                hint="Set client_encoding to UTF8 (or COPY ... ENCODING 'UTF8') for this COPY.")
        for name, value in (("delimiter", delimiter), ("quote", quote), ("escape", escape)):
            if value is not None and len(value.encode()) != 1:
                raise CopySplitError(FEATURE_NOT_SUPPORTED,
                                     f"COPY {name} must be a single one-byte character")
        self.shards = shards
        self.key_index = key_index
        self.format = format
        self._key: KeyType = key_type(data_type)
        self._csv = csv = format == "csv"
        self._binary = format == "binary"
        self._delim = (delimiter if delimiter is not None else ("," if csv else "\t")).encode()
        self._null = (null if null is not None else ("" if csv else "\\N")).encode()
        self._default = default.encode() if default is not None else None
        self._quote = (quote if quote is not None else '"').encode()[0]
        self._escape = escape.encode()[0] if escape is not None else self._quote
        self._force_not_null = csv and force_not_null
        self._force_null = csv and force_null
        self._ignore_bad_keys = (on_error or "stop").lower() == "ignore"
        self._column_count = column_count
        self._table = table or "table"
        self._key_column = key_column or f"number {key_index + 1}"

        self._buf = bytearray()  # the incomplete row (or binary header) not routed yet
        self._outs: list[list[bytes]] = [[] for _ in range(shards)]
        self._appends = [rows.append for rows in self._outs]
        self._head = b""  # owed to every shard before its rows: the header
        self._tail = b""  # owed to every shard after its rows: the binary trailer
        self._last_raw: tuple[int, bytes] | None = None  # an unterminated last line: (shard, bytes)
        self._header_pending = bool(header) and not self._binary
        self._binary_header_done = False
        self._need = 0  # binary: bytes the buffer must hold before the tuple under way can be whole
        self._eol: bytes | None = None
        self._line = 0  # lines (text, CSV) or tuples (binary) taken so far, for error messages
        self._done = False  # the end marker or trailer was seen
        self._failed: CopySplitError | None = None
        self._resume: tuple[int, bool, bool] | None = None  # scanner state inside an incomplete line
        self._search_from = 0  # where to look for a row ending in an incomplete line
        self._fast = True  # tests turn the fast paths off to compare them with the exact scanner
        q = re.escape(bytes([self._quote]))
        specials = q + re.escape(bytes([self._escape])) if csv else rb"\\"
        self._line_special = re.compile(b"[" + specials + rb"\r\n]")

    @classmethod
    def from_statement(cls, statement: CopyStatement, columns: Sequence[str], key_column: str,
                       shards: int, data_type: str, client_encoding: str = "UTF8") -> CopySplitter:
        """The splitter for a parsed `COPY ... FROM STDIN`. `columns` is the COPY's column list, or
        when it has none the table's columns in PostgreSQL's order (attnum, dropped ones left out);
        `client_encoding` the session's, used unless the statement names an ENCODING."""
        if not statement.is_from or not statement.stdio:
            what = "COPY TO" if not statement.is_from else "COPY FROM a server file or program"
            raise CopySplitError(FEATURE_NOT_SUPPORTED,
                                 f"{what} cannot be split across shards: only COPY FROM STDIN can")
        if key_column not in columns:
            raise CopySplitError(
                FEATURE_NOT_SUPPORTED,
                f'COPY into the sharded table "{statement.table}" must include its sharding key '
                f'column "{key_column}"',
                hint="Name the column in the COPY column list: its value chooses each row's shard.")
        return cls(
            shards=shards, key_index=list(columns).index(key_column), data_type=data_type,
            format=statement.format, delimiter=statement.delimiter, null=statement.null,
            quote=statement.quote, escape=statement.escape, header=statement.header,
            encoding=statement.encoding or client_encoding,
            force_not_null=_names(statement.force_not_null, key_column),
            force_null=_names(statement.force_null, key_column), default=statement.default,
            on_error=statement.on_error, column_count=len(columns), table=statement.table,
            key_column=key_column)

    # -- the API --------------------------------------------------------------------------------

    def feed(self, payload: bytes) -> dict[int, list[bytes]]:
        """One CopyData payload in; for each shard with something to send, its bytes out."""
        if self._failed is not None:
            raise self._failed
        if self._done:
            if payload and self._binary:
                self._fail(BAD_COPY_FILE_FORMAT, "received copy data after EOF marker")
            return {}  # PostgreSQL ignores whatever follows the end marker
        self._buf += payload
        self._run(final=False)
        return self._collect()

    def finish(self) -> dict[int, list[bytes]]:
        """At CopyDone: the last rows (an unterminated last line is a row, as in PostgreSQL)."""
        if self._failed is not None:
            raise self._failed
        if not self._done:
            self._run(final=True)
        return self._collect()

    # -- plumbing -------------------------------------------------------------------------------

    def _run(self, final: bool) -> None:
        try:
            if self._binary:
                self._binary_rows()
                if final:
                    self._binary_end()
            else:
                self._text_rows(final)
        except CopySplitError as exc:
            self._failed = exc
            raise

    def _collect(self) -> dict[int, list[bytes]]:
        joiner = b"" if self._binary else (self._eol or b"\n")
        out: dict[int, list[bytes]] = {}
        head, tail, last = self._head, self._tail, self._last_raw
        for shard, rows in enumerate(self._outs):
            parts = [head] if head else []
            if rows:
                parts.append(joiner.join(rows))
                parts.append(joiner)
                rows.clear()
            if last is not None and last[0] == shard:
                parts.append(last[1])
            if tail:
                parts.append(tail)
            if parts:
                out[shard] = [b"".join(parts)]
        self._head = self._tail = b""
        self._last_raw = None
        return out

    def _fail(self, sqlstate: str, message: str, *, column: bool = False, value: bytes | None = None,
              hint: str | None = None) -> None:
        context = f"COPY {self._table}, line {self._line}"
        if column:
            context += f", column {self._key_column}"
            if value is not None:
                context += f': "{value.decode("utf-8", "replace")}"'
        self._failed = CopySplitError(sqlstate, message, line=self._line, context=context, hint=hint)
        raise self._failed

    def _missing(self) -> None:
        self._fail(BAD_COPY_FILE_FORMAT, f'missing data for column "{self._key_column}"')

    def _bad_key(self, exc: BadKey, value: bytes | None) -> int:
        if self._ignore_bad_keys:
            return 0  # ON_ERROR ignore: the shard skips the row, as PostgreSQL would
        self._fail(exc.sqlstate, exc.message, column=True, value=value)
        raise AssertionError("unreachable")

    # -- routing lines --------------------------------------------------------------------------

    def _route_block(self, block: bytes, eol: bytes) -> int:
        """Complete lines without hard cases (see _Hard): route them. Returns how many bytes were
        used: all, unless a CSV quote opened in the block is still open at its end."""
        lines = block.split(eol)
        lines.pop()  # the block ends with a row ending
        used = len(block)
        taboo = bytes([self._quote]) if self._csv else b"\\"  # what the bulk key reading must not meet
        if taboo not in block:
            taboo = b""
        elif self._csv:
            lines, rest = _join_quoted(lines, taboo, eol)
            if rest is not None:
                used -= len(rest) + len(eol)
        self._route_lines(lines, taboo)
        return used

    def _route_lines(self, lines: list[bytes], taboo: bytes) -> None:
        base = self._line
        shards: list[int] | None = None
        if self._default is None and (not taboo or self.key_index == 0):
            try:
                shards = self._bulk_shards(lines, taboo)
            except _NOT_BULK:
                shards = None
        if shards is None:
            shards = []
            for i, line in enumerate(lines):
                self._line = base + i + 1
                shards.append(self._shard_of_line(line))
        appends = self._appends
        for line, shard in zip(lines, shards, strict=True):
            appends[shard](line)
        self._line = base + len(lines)

    def _bulk_shards(self, lines: list[bytes], taboo: bytes) -> list[int]:
        """Every line's shard at once. Any trouble (a NULL or bad key, a missing field, a quote or
        backslash before the key's end: `taboo`) raises, and the caller goes line by line."""
        delim, k, n = self._delim, self.key_index, self.shards
        if k == 0:
            keys = [line.partition(delim)[0] for line in lines]
            if taboo and taboo in b"".join(keys):
                raise ValueError("an escape or quote in a key")
        else:
            keys = [line.split(delim, k + 1)[k] for line in lines]
        if not self._force_not_null and self._null in keys:
            raise ValueError("a NULL key")
        if self._key.is_int:
            return [int_key_hash(int(key)) % n for key in keys]
        if self._key.name != "uuid":
            return [bytes_key_hash(key) % n for key in keys]
        shard_of = self._key.text_shard
        return [shard_of(key, n) for key in keys]

    def _shard_of_line(self, line: bytes) -> int:
        try:
            if self._csv:
                value, raw, quoted = csv_field(line, self._delim, self._quote, self._escape, self.key_index)
                key = self._csv_null(value, raw, quoted)
            else:
                raw = text_field(line, self._delim, self.key_index)
                if raw is None:
                    self._missing()
                key = None if raw == self._null else text_value(raw)
        except FieldError as exc:
            if exc.message is None:
                self._missing()
            self._fail(exc.sqlstate, exc.message)
        if self._default is not None and raw == self._default:
            self._fail(FEATURE_NOT_SUPPORTED,
                       "the sharding key cannot take its DEFAULT in a COPY into a sharded table",
                       column=True, value=raw)
        try:
            return self._key.text_shard(key, self.shards)
        except BadKey as exc:
            return self._bad_key(exc, key)

    def _csv_null(self, value: bytes, raw: bytes, quoted: bool) -> bytes | None:
        """NULL, FORCE_NOT_NULL and FORCE_NULL, in PostgreSQL's order."""
        is_null = not quoted and raw == self._null
        if is_null and self._force_not_null:
            return self._null
        if not is_null and self._force_null and value == self._null:
            return None
        return None if is_null else value

    def _take_line(self, content: bytes, marker: bool, *, terminated: bool) -> None:
        """One line found by the exact scanner."""
        if marker:
            self._done = True
            if not content:
                return
        self._line += 1
        if self._header_pending:
            self._header_pending = False
            self._head = content + (self._eol or b"\n") if terminated else content
            return
        shard = self._shard_of_line(content)
        if terminated or marker:
            self._appends[shard](content)
        else:
            self._last_raw = (shard, content)  # sent as it came: the shard reads it the same way

    # -- finding lines --------------------------------------------------------------------------

    def _text_rows(self, final: bool) -> None:
        buf = self._buf
        pos = 0
        while not self._done and pos < len(buf):
            if self._fast and self._eol is not None and self._resume is None and not self._header_pending:
                end = self._complete_end(buf, pos)
                if end > pos:
                    pos = self._mixed(buf, pos, end, final)
                    if pos < end:
                        break  # inside a line that goes on past the data so far
                    continue
                if not final:
                    break
            r = self._scan_line(buf, pos, final)
            if r is _NEED_MORE:
                break
            content_end, next_pos, marker = r
            self._take_line(_copy(buf, pos, content_end), marker, terminated=next_pos > content_end)
            pos = next_pos
        if self._done:
            buf.clear()
        elif pos:
            del buf[:pos]
            self._search_from = max(0, self._search_from - pos)

    def _complete_end(self, buf: bytearray, pos: int) -> int:
        """Just past the last row ending in buf (a candidate: it may be quoted or escaped), or -1."""
        assert self._eol is not None
        last = buf.rfind(self._eol[-1:], max(pos, self._search_from))
        if last < 0:
            self._search_from = len(buf)
            return -1
        self._search_from = 0
        return last + 1

    def _mixed(self, buf: bytearray, pos: int, end: int, final: bool) -> int:
        """Route the complete lines in buf[pos:end]: stretches without hard cases in bulk, the
        others one by one with the exact scanner. Returns where it stopped."""
        eol = self._eol
        assert eol is not None
        hard = _Hard(buf, end, eol, csv=self._csv, quote=self._quote if self._quote != self._escape else -1)
        term = eol[-1:]
        while pos < end and not self._done:
            h = hard.next(pos)
            stop = end if h >= end else buf.rfind(term, pos, h) + 1
            if stop > pos:
                used = self._route_block(_copy(buf, pos, stop), eol)
                pos += used
                if pos == end:
                    return pos
            r = self._scan_line(buf, pos, final)
            if r is _NEED_MORE:
                return pos
            content_end, next_pos, marker = r
            self._take_line(_copy(buf, pos, content_end), marker, terminated=next_pos > content_end)
            pos = next_pos
        return pos

    def _scan_line(self, buf: bytearray, start: int, final: bool) -> tuple[int, int, bool] | None:
        """PostgreSQL's CopyReadLineText from `start`: (content end, next line's start, whether it
        ended at the end marker), or None when the line is not complete yet (the scanner's state is
        kept, so the next call goes on where this one stopped)."""
        resume, self._resume = self._resume, None
        if self._csv:
            return self._scan_csv(buf, start, final, resume)
        return self._scan_text(buf, start, final, resume)

    def _scan_text(self, buf: bytearray, start: int, final: bool,
                   resume: tuple[int, bool, bool] | None) -> tuple[int, int, bool] | None:
        pos = start + resume[0] if resume else start
        n = len(buf)
        search = self._line_special.search
        while True:
            m = search(buf, pos)
            if m is None:
                return self._incomplete(start, n, final, (n - start, False, False))
            j = m.start()
            c = buf[j]
            if c == BACKSLASH:
                if j + 1 >= n:
                    return self._incomplete(start, n, final, (j - start, False, False))
                if buf[j + 1] == DOT:
                    r = self._marker(buf, j, final, csv=False)
                    if r is _NEED_MORE:
                        self._resume = (j - start, False, False)
                        return _NEED_MORE
                    return j, r[1], True
                pos = j + 2  # the escaped byte is data, a newline included
                continue
            r = self._row_end(buf, j, final)
            if r is _NEED_MORE:
                self._resume = (j - start, False, False)
            return r

    def _scan_csv(self, buf: bytearray, start: int, final: bool,
                  resume: tuple[int, bool, bool] | None) -> tuple[int, int, bool] | None:
        q, e = self._quote, self._escape
        if e == q:
            e = -1  # PostgreSQL: an escape equal to the quote is only a quote here
        pos, in_quote, last_was_esc = start, False, False
        if resume:
            pos, in_quote, last_was_esc = start + resume[0], resume[1], resume[2]
        n = len(buf)
        search = self._line_special.search
        first = pos == start
        while True:
            if first:
                if pos >= n:
                    return self._incomplete(start, n, final, (0, False, False))
                j = pos  # the first byte may start an end marker, whatever it is
            else:
                m = search(buf, pos)
                if m is None:
                    esc = last_was_esc and n == pos
                    return self._incomplete(start, n, final, (n - start, in_quote, esc))
                j = m.start()
                if j > pos:
                    last_was_esc = False
            state = (j - start, in_quote, last_was_esc)
            c = buf[j]
            if in_quote and c == e:
                last_was_esc = not last_was_esc
            if c == q and not last_was_esc:
                in_quote = not in_quote
            if c != e:
                last_was_esc = False
            if not in_quote and c in (CR, NL):
                r = self._row_end(buf, j, final)
                if r is _NEED_MORE:
                    self._resume = state
                return r
            if c == BACKSLASH and first:
                if j + 1 >= n and not final:
                    self._resume = state
                    return _NEED_MORE
                if j + 1 < n and buf[j + 1] == DOT:
                    r = self._marker(buf, j, final, csv=True)
                    if r is _NEED_MORE:
                        self._resume = state
                        return _NEED_MORE
                    if r[0]:
                        return j, r[1], True
                    first, pos = False, min(r[1], n)  # PostgreSQL took the bytes it looked at as data
                    continue
            first = False
            pos = j + 1

    def _incomplete(self, start: int, n: int, final: bool,
                    state: tuple[int, bool, bool]) -> tuple[int, int, bool] | None:
        """No row ending in the data so far: at the end of the data the rest is the last line (it
        needs no row ending); otherwise wait, keeping the scanner's state."""
        if final:
            return (n, n, False) if n > start else _NEED_MORE
        self._resume = state
        return _NEED_MORE

    def _row_end(self, buf: bytearray, j: int, final: bool) -> tuple[int, int, bool] | None:
        """A carriage return or newline at j ends the line, if it is this data's row ending."""
        csv = self._csv
        if buf[j] == CR:
            if self._eol in (None, EOL_CRNL):
                if j + 1 >= len(buf) and not final:
                    return _NEED_MORE
                if j + 1 < len(buf) and buf[j + 1] == NL:
                    self._eol = EOL_CRNL
                    return j, j + 2, False
                if self._eol == EOL_CRNL:
                    self._stray_cr(csv)
                self._eol = EOL_CR
            elif self._eol == EOL_NL:
                self._stray_cr(csv)
            return j, j + 1, False
        if self._eol in (EOL_CR, EOL_CRNL):
            self._line += 1
            self._fail(BAD_COPY_FILE_FORMAT,
                       "unquoted newline found in data" if csv else "literal newline found in data",
                       hint="Use quoted CSV field to represent newline." if csv
                       else 'Use "\\n" to represent newline.')
        self._eol = EOL_NL
        return j, j + 1, False

    def _stray_cr(self, csv: bool) -> None:
        self._line += 1
        self._fail(BAD_COPY_FILE_FORMAT,
                   "unquoted carriage return found in data" if csv
                   else "literal carriage return found in data",
                   hint="Use quoted CSV field to represent carriage return." if csv
                   else 'Use "\\r" to represent carriage return.')

    def _marker(self, buf: bytearray, j: int, final: bool, *, csv: bool) -> tuple[bool, int] | None:
        """`\\.` at j: (True, next) at the end-of-data marker; in CSV (False, next) when it is data
        after all; PostgreSQL's errors for a text marker that is malformed."""
        n, k = len(buf), j + 2
        if self._eol == EOL_CRNL:
            if k >= n and not final:
                return _NEED_MORE
            c2 = buf[k] if k < n else 0
            k += 1
            if c2 != CR:
                if csv:
                    return False, k
                self._marker_error("end-of-copy marker does not match previous newline style"
                                   if c2 == NL else "end-of-copy marker corrupt")
        if k >= n and not final:
            return _NEED_MORE
        c2 = buf[k] if k < n else 0
        k += 1
        if c2 not in (CR, NL):
            if csv:
                return False, k
            self._marker_error("end-of-copy marker corrupt")
        if (self._eol in (EOL_NL, EOL_CRNL) and c2 != NL) or (self._eol == EOL_CR and c2 != CR):
            self._marker_error("end-of-copy marker does not match previous newline style")
        return True, k

    def _marker_error(self, message: str) -> None:
        self._line += 1
        self._fail(BAD_COPY_FILE_FORMAT, message)

    # -- binary ---------------------------------------------------------------------------------

    def _binary_rows(self) -> None:
        buf = self._buf
        if len(buf) < self._need:
            return  # the tuple under way cannot be whole yet: do not copy the buffer again
        pos = 0
        if not self._binary_header_done:
            pos = self._binary_header(buf)
            if pos == 0:
                return
        data = bytes(buf)
        n = len(data)
        k, expected, appends, shards = self.key_index, self._column_count, self._appends, self.shards
        unpack16, unpack32 = _I16.unpack_from, _I32.unpack_from
        shard_of = self._key.binary_shard
        while n - pos >= 2:
            (count,) = unpack16(data, pos)
            if count == -1:
                self._line += 1
                self._tail = BINARY_TRAILER
                self._done = True
                if n > pos + 2:
                    self._fail(BAD_COPY_FILE_FORMAT, "received copy data after EOF marker")
                pos += 2
                break
            if (expected is not None and count != expected) or count <= k:
                self._line += 1
                want = expected if expected is not None else f"more than {k}"
                self._fail(BAD_COPY_FILE_FORMAT, f"row field count is {count}, expected {want}")
            p, key = pos + 2, None
            for i in range(count):
                if p + 4 > n:
                    p += 4
                    break
                (size,) = unpack32(data, p)
                p += 4
                if size < -1:
                    self._line += 1
                    self._fail(BAD_COPY_FILE_FORMAT, "invalid field size")
                if size > 0:
                    if i == k:
                        key = data[p : p + size]
                    p += size
                elif i == k and size == 0:
                    key = b""
                if p > n:
                    break
            if p > n:
                self._need = p - pos  # at least this much from the tuple's start
                break
            self._line += 1
            try:
                shard = shard_of(key, shards)
            except BadKey as exc:
                shard = self._bad_key(exc, None)
            appends[shard](data[pos:p])
            pos = p
        else:
            self._need = 0
        if self._done:
            buf.clear()
        elif pos:
            del buf[:pos]

    def _binary_header(self, buf: bytearray) -> int:
        """The file header (signature, flags, extension), owed to every shard; 0 while incomplete."""
        n = len(buf)
        if n < 11 and BINARY_SIGNATURE.startswith(bytes(buf)):
            return 0
        if bytes(buf[:11]) != BINARY_SIGNATURE:
            self._fail(BAD_COPY_FILE_FORMAT, "COPY file signature not recognized")
        if n < 19:
            return 0
        (flags,) = _I32.unpack_from(buf, 11)
        if flags & (1 << 16):
            self._fail(BAD_COPY_FILE_FORMAT, "invalid COPY file header (WITH OIDS)")
        if (flags & ~(1 << 16)) >> 16:
            self._fail(BAD_COPY_FILE_FORMAT, "unrecognized critical flags in COPY file header")
        (extension,) = _I32.unpack_from(buf, 15)
        if extension < 0:
            self._fail(BAD_COPY_FILE_FORMAT, "invalid COPY file header (missing length)")
        if n < 19 + extension:
            return 0
        self._binary_header_done = True
        self._head = bytes(buf[: 19 + extension])
        return 19 + extension

    def _binary_end(self) -> None:
        """At CopyDone without a trailer: PostgreSQL accepts the end of data between tuples (even
        after one stray byte), not inside a tuple or before the header is whole."""
        have = len(self._buf)
        if not self._binary_header_done:
            self._fail(BAD_COPY_FILE_FORMAT, "COPY file signature not recognized" if have < 11
                       else "invalid COPY file header (missing flags)" if have < 15
                       else "invalid COPY file header (missing length)" if have < 19
                       else "invalid COPY file header (wrong length)")
        if have >= 2:
            self._line += 1
            self._fail(BAD_COPY_FILE_FORMAT, "unexpected EOF in COPY data")


class _Hard:
    """Where the next line that the bulk path cannot take starts its trouble, in buf[:end]:
    text: `\\.` (maybe the end marker) or a backslash before a row ending (an escaped one);
    CSV: `\\.` at a line's start, or any quote when ESCAPE is not the quote; both: a carriage
    return or newline that is not this data's row ending. Each kind is searched for once, and
    again only when the position has passed it."""

    def __init__(self, buf: bytearray, end: int, eol: bytes, *, csv: bool, quote: int):
        self.buf, self.end, self.eol, self.csv = buf, end, eol, csv
        self.needles = [b"\\."]
        if not csv:
            self.needles.append(b"\\" + eol)
        elif quote >= 0:
            self.needles.append(bytes([quote]))
        if eol != EOL_CRNL:
            self.needles.append(EOL_CR if eol == EOL_NL else EOL_NL)
        self.at = [-1] * len(self.needles)
        self.crnl_at = -1 if eol == EOL_CRNL else end

    def next(self, pos: int) -> int:
        best = self.end
        for i, needle in enumerate(self.needles):
            at = self.at[i]
            if at < pos:
                at = self._find(needle, pos)
                self.at[i] = at
            best = min(best, at)
        if self.crnl_at < pos:
            self.crnl_at = self._stray_crnl(pos)
        return min(best, self.crnl_at)

    def _find(self, needle: bytes, pos: int) -> int:
        buf, end = self.buf, self.end
        at = buf.find(needle, pos, end)
        if self.csv and needle == b"\\.":
            eol = self.eol
            while at > pos and buf[at - len(eol) : at] != eol:  # not at a line's start: plain data
                at = buf.find(needle, at + 1, end)
        return end if at < 0 else at

    def _stray_crnl(self, pos: int) -> int:
        buf, end = self.buf, self.end
        pairs = buf.count(b"\r\n", pos, end)
        if buf.count(b"\r", pos, end) == pairs == buf.count(b"\n", pos, end):
            return end
        m = _CRNL_STRAY.search(buf, pos, end)
        return end if m is None else m.start()


def _join_quoted(lines: list[bytes], q: bytes, eol: bytes) -> tuple[list[bytes], bytes | None]:
    """CSV lines (ESCAPE = QUOTE) with the row endings inside quotes joined back: a line with an odd
    number of quotes opens a field that the next line with an odd number closes. Returns the
    lines and what is left open at the end (None if nothing)."""
    odd = [line.count(q) & 1 for line in lines]
    if not any(odd):
        return lines, None
    out: list[bytes] = []
    pending: list[bytes] | None = None
    for line in lines:
        if pending is None:
            if q in line and line.count(q) % 2:
                pending = [line]
            else:
                out.append(line)
        else:
            pending.append(line)
            if line.count(q) % 2:
                out.append(eol.join(pending))
                pending = None
    return out, (eol.join(pending) if pending is not None else None)


def _copy(buf: bytearray, start: int, end: int) -> bytes:
    return bytes(buf[start:end])


def _names(option: tuple[str, ...] | bool, column: str) -> bool:
    return option is True or (isinstance(option, tuple) and column in option)

