"""SQL inspection: cheap keyword checks now; pglast parsing and routing later."""
