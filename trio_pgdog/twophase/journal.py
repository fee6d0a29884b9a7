"""The journal: the two-phase commits the proxy decided and has not finished, on disk.

A transaction prepared on every shard it wrote on is committed once the decision is on disk:
one file per transaction, `<gid>.json` in `two_phase_journal_dir`, written to a temporary
name, fsync'd, renamed and the directory fsync'd, before the first COMMIT PREPARED. The file
is removed when every shard has committed. A proxy that stops in between (crash, SIGKILL,
power loss) finds the decision at its next start and finishes it (twophase/recovery.py).

Prepared transactions without a commit decision in the journal were never decided: recovery
rolls them back. The journal also keeps, in memory, the transactions a session of this
process is committing right now (`in_flight`): recovery leaves those alone.
"""

from __future__ import annotations

import json
import logging
import os

import attrs
import trio

from ..router.sharding.unique_id import IDS

log = logging.getLogger(__name__)

_SUFFIX = ".json"


def gid_prefix(node: int) -> str:
    """The start of the names of this node's prepared transactions."""
    return f"pgdog_{node}_"


@attrs.frozen
class Decision:
    gid: str
    user: str       # the proxy user and logical database whose pools committed it
    database: str
    shards: tuple[int, ...]
    commit: bool    # False: roll back (kept when a rollback could not finish)


class Journal:
    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.decisions: dict[str, Decision] = {}
        self.in_flight: set[str] = set()
        self.unreadable: set[str] = set()  # records that cannot be read: left to a human
        self.loaded = False

    def new_gid(self, node: int) -> str:
        """A name no other prepared transaction has: node, then a unique id (its time and a
        sequence; unique across restarts as pgdog.unique_id() is)."""
        return f"{gid_prefix(node)}{IDS.next(node)}"

    def load(self) -> bool:
        """The decisions a previous run left (read once); False if the directory cannot be
        read: then nothing is known, and recovery must not roll anything back."""
        if self.loaded:
            return True
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            names = []
        except OSError as exc:
            log.error("two-phase journal %s cannot be read: %s; prepared transactions are not "
                      "recovered until it can", self.directory, exc)
            return False
        self.loaded = True
        for name in names:
            if not name.endswith(_SUFFIX):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path) as f:
                    fields = json.load(f)
                decision = Decision(fields["gid"], fields["user"], fields["database"],
                                    tuple(fields["shards"]), fields["decision"] == "commit")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("two-phase journal: %s cannot be read (%s): its transaction is left "
                          "prepared on the shards until the file is repaired or removed", path, exc)
                self.unreadable.add(name[:-len(_SUFFIX)])
                continue
            self.decisions[decision.gid] = decision
        if self.decisions:
            log.warning("two-phase journal %s: %d unfinished transaction(s) from a previous run",
                        self.directory, len(self.decisions))
        return True

    def check_writable(self) -> bool:
        """Can records be written? Said at start-up, not at the first commit over shards."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            writable = os.access(self.directory, os.W_OK | os.X_OK)
        except OSError as exc:
            writable, why = False, str(exc)
        else:
            why = "not writable"
        if not writable:
            log.error("two-phase journal %s: %s; transactions that write on several shards "
                      "will be rolled back at COMMIT until it is fixed", self.directory, why)
        return writable

    async def record(self, decision: Decision) -> None:
        """Write `decision` durably (in a thread: fsync blocks). Raises OSError."""
        await trio.to_thread.run_sync(self._write, decision)
        self.decisions[decision.gid] = decision

    def _write(self, decision: Decision) -> None:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, decision.gid + _SUFFIX)
        text = json.dumps({"gid": decision.gid, "user": decision.user,
                           "database": decision.database, "shards": list(decision.shards),
                           "decision": "commit" if decision.commit else "rollback"})
        temporary = path + ".tmp"
        with open(temporary, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def done(self, gid: str) -> None:
        """Every shard finished `gid`: its record goes (not fsync'd: recovery finding it again
        only learns that the shards no longer have it)."""
        self.decisions.pop(gid, None)
        try:
            os.unlink(os.path.join(self.directory, gid + _SUFFIX))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("two-phase journal: cannot remove the record of %s: %s", gid, exc)
