"""A bounded LRU from SQL text to `StatementFacts`, so each distinct text is parsed once."""

from __future__ import annotations

from collections import OrderedDict

from trio_pgdog.router.classify import StatementFacts, classify

__all__ = ["ParseCache"]


class ParseCache:
    """LRU cache of `classify` results keyed by the exact text (str and bytes keys are distinct).

    Texts longer than `max_text_length` are classified every time and never stored: one-off bulk
    statements with inlined data would otherwise let 10,000 entries hold gigabytes.
    Not thread-safe; meant for one Trio thread.
    """

    def __init__(self, max_entries: int = 10_000, max_text_length: int = 65_536) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.max_text_length = max_text_length
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[str | bytes, StatementFacts] = OrderedDict()

    def get(self, sql: str | bytes) -> StatementFacts:
        """The facts for `sql`, from the cache or freshly classified."""
        facts = self._entries.get(sql)
        if facts is not None:
            self.hits += 1
            self._entries.move_to_end(sql)
            return facts
        self.misses += 1
        facts = classify(sql)
        if len(sql) <= self.max_text_length:
            self._entries[sql] = facts
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evictions += 1
        return facts

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str | bytes, StatementFacts]]:
        """(text, facts) of every entry, least recently used first (the admin console)."""
        return list(self._entries.items())

    def __contains__(self, sql: object) -> bool:
        return sql in self._entries

    def clear(self) -> None:
        """Drop every entry; the counters keep counting."""
        self._entries.clear()
