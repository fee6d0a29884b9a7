"""The one exception type of the embedded-cluster helpers."""


class EmbeddedError(Exception):
    """A throw-away PostgreSQL cluster could not be found, created, started or queried.

    The message is meant for a person: it says what failed and, where we know it, what to do
    (install PostgreSQL, set PGDOG_PG_BINDIR) or what the server said (the tail of its log).
    """
