"""Authentication: clients to the proxy (auth.client) and the proxy to PostgreSQL (auth.server)."""
