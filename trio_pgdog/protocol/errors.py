"""SQLSTATE codes the proxy itself reports, and the exceptions that carry them."""

from __future__ import annotations

PROTOCOL_VIOLATION = "08P01"
CONNECTION_FAILURE = "08006"
CANNOT_CONNECT_NOW = "57P03"
UNDEFINED_DATABASE = "3D000"
INVALID_PASSWORD = "28P01"
INVALID_AUTHORIZATION = "28000"
TOO_MANY_CONNECTIONS = "53300"
ADMIN_SHUTDOWN = "57P01"
INSUFFICIENT_PRIVILEGE = "42501"
FEATURE_NOT_SUPPORTED = "0A000"
QUERY_CANCELED = "57014"
INVALID_PARAMETER_VALUE = "22023"
INTERNAL_ERROR = "XX000"
SYNTAX_ERROR = "42601"
UNDEFINED_OBJECT = "42704"
CANT_CHANGE_RUNTIME_PARAM = "55P02"


class ProtocolError(Exception):
    """The peer broke the wire protocol; the connection cannot be trusted any more."""


class ProxyError(Exception):
    """An error the proxy reports to a client as an ErrorResponse.

    `fatal` errors end the client's session after the message is sent. `note` is for the
    proxy's log only: what the operator may know and the client must not.
    """

    def __init__(self, sqlstate: str, message: str, *, fatal: bool = False, hint: str | None = None,
                 note: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.fatal = fatal
        self.hint = hint
        self.note = note

    @property
    def severity(self) -> str:
        return "FATAL" if self.fatal else "ERROR"


class ServerError(Exception):
    """PostgreSQL answered with an ErrorResponse where the proxy needed success."""

    def __init__(self, fields: dict[str, str]):
        super().__init__(fields.get("M", "unknown server error"))
        self.fields = fields

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", INTERNAL_ERROR)
