"""Hooks for tests/test_hooks_builtin.py: loaded as "hookmods.sample_hook:<name>"."""

from __future__ import annotations

from trio_pgdog.hooks.api import Decision, QueryInfo


class SampleHook:
    """Blocks statements containing a configured word."""

    def __init__(self, word: str = "forbidden", sqlstate: str = "42501") -> None:
        self.word = word
        self.sqlstate = sqlstate

    def pre_query(self, query: QueryInfo) -> Decision | None:
        if self.word in query.sql:
            return Decision.block(f"{self.word!r} is not allowed here", self.sqlstate)
        return None


class Nested:
    class Inner:
        def post_query(self, done: object) -> None:
            pass


def make_hook(word: str) -> SampleHook:
    return SampleHook(word=word)


ready = SampleHook("ready-made")


class NotAHook:
    def run(self) -> None:
        pass


class FailingInit:
    def __init__(self) -> None:
        raise RuntimeError("no database\nsecond line")

    def pre_query(self, query: QueryInfo) -> None:
        return None
