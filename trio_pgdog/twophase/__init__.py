"""Two-phase commit across shards: the journal of decisions and the recovery that carries
them out (the commit itself, on a session's shard connections: session/two_phase.py)."""
