"""A lexical shortcut for the commonest read: one plain SELECT.

The parse cache works per distinct text, and simple-protocol clients put literals in the text
(`... WHERE aid = 48213`), so nearly every such query would be parsed (~30 µs). A statement
that starts with SELECT and contains none of the words that could make classify() call it a
write (locking clauses, INTO, the writing functions, several statements, a role hint) is a
read whatever its literals are, so it needs no parse.
"""

from __future__ import annotations

import re

from .classify import WRITING_FUNCTIONS

_LEADING_SELECT = re.compile(rb"\s*select\b", re.I)
_WORDS = re.compile(rb"[a-z_][a-z0-9_$]*")
# Anything here sends the text to the full classifier.
_SUSPECT = frozenset(w.encode() for w in WRITING_FUNCTIONS) | {b"for", b"into", b"pgdog_role"}


def plain_select(sql: bytes) -> bool:
    """True only if `sql` is certainly a single read-only SELECT."""
    if not _LEADING_SELECT.match(sql) or b";" in sql.rstrip(b"; \t\r\n\x00") or b"--" in sql:
        return False
    lowered = sql.lower()
    return _SUSPECT.isdisjoint(_WORDS.findall(lowered))
