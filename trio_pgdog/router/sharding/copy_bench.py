"""`python -m trio_pgdog.router.sharding.copy_bench`: how fast the COPY splitter routes rows.

Feeds generated rows (three columns, the key first) in 64 KiB CopyData payloads to a splitter
with 4 shards and prints rows per second of CPU time (process time, so that other work on the
machine does not count) for each format and key type, and for the exact scanner alone (what
lines with escapes, quotes or end markers go through). See docs/sharding.md.
"""

from __future__ import annotations

import argparse
import struct
import time
import uuid
from collections.abc import Callable, Iterator

from .copy import BINARY_SIGNATURE, CopySplitter

CHUNK = 65536


def _rows(fmt: str, key: str, count: int) -> Iterator[bytes]:
    for i in range(count):
        k = {"bigint": b"%d" % (i * 7919), "varchar": b"user-%d" % i,
             "uuid": str(uuid.UUID(int=i * 0x9E3779B97F4A7C15 % (1 << 128))).encode()}[key]
        if fmt == "text":
            yield b"%s\tsome text for row %d\t%d\n" % (k, i, i % 100)
        elif fmt == "csv":
            yield b'%s,"some text, for row %d",%d\n' % (k, i, i % 100)
        else:
            v = b"some text for row %d" % i
            raw_key = struct.pack(">q", i * 7919) if key == "bigint" else (
                uuid.UUID(k.decode()).bytes if key == "uuid" else k)
            yield (b"\0\3" + struct.pack(">i", len(raw_key)) + raw_key + struct.pack(">i", len(v)) + v
                   + struct.pack(">ii", 4, i % 100))


def _chunks(fmt: str, key: str, count: int) -> list[bytes]:
    data = bytearray(BINARY_SIGNATURE + b"\0" * 8 if fmt == "binary" else b"")
    chunks = []
    for row in _rows(fmt, key, count):
        data += row
        if len(data) >= CHUNK:
            chunks.append(bytes(data[:CHUNK]))
            del data[:CHUNK]
    chunks.append(bytes(data + (b"\xff\xff" if fmt == "binary" else b"")))
    return chunks


def measure(fmt: str, key: str, count: int, *, fast: bool = True) -> float:
    """Rows per CPU second."""
    chunks = _chunks(fmt, key, count)
    splitter = CopySplitter(shards=4, key_index=0, data_type=key, format=fmt)
    splitter._fast = fast
    feed: Callable[[bytes], object] = splitter.feed
    start = time.process_time()
    for chunk in chunks:
        feed(chunk)
    splitter.finish()
    return count / (time.process_time() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows per run (default 1,000,000)")
    args = p.parse_args(argv)
    runs = [("text", "bigint", True), ("text", "varchar", True), ("text", "uuid", True),
            ("csv", "bigint", True), ("csv", "varchar", True), ("binary", "bigint", True),
            ("binary", "varchar", True), ("text", "bigint", False), ("csv", "bigint", False)]
    for fmt, key, fast in runs:
        count = args.rows if fast else max(1, args.rows // 5)
        rate = measure(fmt, key, count, fast=fast)
        path = "" if fast else " (exact scanner only)"
        print(f"{fmt:6} {key:8} {rate:>12,.0f} rows/s{path}")


if __name__ == "__main__":
    main()
