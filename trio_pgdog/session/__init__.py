"""One client session: startup, login and the relay between client and servers."""
