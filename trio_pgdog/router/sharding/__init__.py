"""Sharding: which shard a key belongs to, and (to come) finding keys in statements and
splitting COPY rows. Kept apart from the session, which only asks."""
