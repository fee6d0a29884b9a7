"""Sans-IO PostgreSQL wire protocol: framing, builders, parsers and SQLSTATE errors."""

from . import messages
from .errors import ProtocolError, ProxyError, ServerError

__all__ = ["ProtocolError", "ProxyError", "ServerError", "messages"]
