"""What PostgreSQL will really answer: the rules both response queues follow.

The Tracker (session/tracker.py) and the hook path (session/hooked.py) each keep a queue of
the answers the server owes, one entry per client message that earns one. PostgreSQL does
not answer every message it is sent:

- after an error in an extended-protocol message it skips every message up to the next
  Sync — a Query or FunctionCall among them never runs and gets no ReadyForQuery;
- during COPY FROM STDIN it reads the client's messages as copy input: a Sync or Flush there
  is ignored, CopyDone/CopyFail end the copy, and any other message ends it with an error
  without being run.

Both queues apply these rules through the functions here, so that the number of
ReadyForQuery the proxy waits for is the number that will come (a session waiting for more
would hold its server connection for good).
"""

from __future__ import annotations

from collections import deque

ENDS_READY = frozenset(b"Z")


class Owed:
    """An answer the server owes: the message types that end it, and whether the message was
    a Sync (which ends PostgreSQL's skipping; a Query or FunctionCall does not)."""

    __slots__ = ("ends", "sync")

    def __init__(self, ends: frozenset[int], *, sync: bool = False):
        self.ends = ends
        self.sync = sync


class _CopyEnd(Owed):
    """A CopyDone or CopyFail sent while a COPY may be about to start ahead of it. Not an
    answer: it marks where the copy input ends, and is dropped when it reaches the head of
    the queue. It reads as an answer nobody waits for to code that looks at queue entries."""

    __slots__ = ()
    hidden = False
    statement = run = synthetic = None


COPY_END = _CopyEnd(frozenset())


def skip_to_sync(queue: deque) -> list:
    """An extended-protocol message failed (the queue's head): PostgreSQL skips to the next
    Sync. Removes and returns the entries up to it; the Sync entry, if sent, stays."""
    skipped = []
    while queue and not queue[0].sync:
        skipped.append(queue.popleft())
    return skipped


def enter_copy(queue: deque) -> tuple[list, bool]:
    """The server started COPY FROM STDIN for the queue's head. Messages already sent behind
    it are copy input: Syncs there are ignored, a CopyDone/CopyFail ends the copy, any other
    message ends it with an error without being run. Returns the entries removed (never
    answered) and whether the copy is still open for the client's next messages."""
    if len(queue) < 2:
        return [], True
    head = queue.popleft()
    removed = []
    still_open = True
    while queue:
        entry = queue.popleft()
        if entry.sync:
            removed.append(entry)
            continue
        if entry is not COPY_END:
            removed.append(entry)  # consumed as bad copy input
        still_open = False
        break
    queue.appendleft(head)
    return removed, still_open


def drop_copy_ends(queue: deque) -> None:
    """Copy ends that reached the head were read outside a COPY: PostgreSQL ignores them."""
    while queue and queue[0] is COPY_END:
        queue.popleft()


class CopyInput:
    """The client's side of COPY FROM STDIN: while the server reads copy input, what each
    client message does to the answers owed (sans-IO, one per queue)."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = False  # the server will read the client's next message as copy input

    def consumes(self, kind: int) -> bool:
        """True if a message of `kind` sent now is copy input (it earns no answer); a
        CopyDone, CopyFail or any message other than CopyData/Flush/Sync ends the copy."""
        if not self.open:
            return False
        if kind not in _COPY_CONTINUES:
            self.open = False
        return True


_COPY_CONTINUES = frozenset(b"dHS")
