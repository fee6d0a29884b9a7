"""The first keywords of a statement, found without a parser (comments and spaces skipped)."""

from __future__ import annotations

import re

_SKIP = re.compile(rb"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.S)
_WORD = re.compile(rb"[A-Za-z_][A-Za-z_0-9.$]*")


def leading_keywords(sql: bytes, count: int = 2) -> list[str]:
    """Up to `count` leading words of `sql`, upper-cased: b'/* x */ discard all' -> ['DISCARD', 'ALL']."""
    words: list[str] = []
    pos = 0
    while len(words) < count:
        pos = _SKIP.match(sql, pos).end()  # type: ignore[union-attr]
        word = _WORD.match(sql, pos)
        if word is None:
            break
        words.append(word.group().decode().upper())
        pos = word.end()
    return words
