"""The server half of SCRAM-SHA-256 as PostgreSQL clients speak it.

scramp derives the keys (salt, StoredKey, ServerKey), but its message parser refuses the
empty user name (`n=,`) that every PostgreSQL client sends, since PostgreSQL takes the user
from the startup packet. So the message exchange of RFC 5802 is written out here; it is
short, and the proof check is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


class ScramError(Exception):
    """The client's messages are malformed or its proof is wrong."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _attributes(message: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if not sep or len(key) != 1:
            raise ScramError(f"malformed SCRAM attribute {part!r}")
        attrs.setdefault(key, value)
    return attrs


class ScramServer:
    """One exchange: `first(client_first)` then `final(client_final)`."""

    def __init__(self, salt: bytes, stored_key: bytes, server_key: bytes, iterations: int):
        self._salt = salt
        self._stored_key = stored_key
        self._server_key = server_key
        self._iterations = iterations
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""

    def first(self, client_first: str) -> str:
        flag, sep1, rest = client_first.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not (sep1 and sep2) or flag not in ("n", "y"):
            # 'p=...' asks for channel binding, which needs TLS the proxy does not offer yet.
            raise ScramError("unsupported SCRAM channel binding request")
        client_nonce = _attributes(bare).get("r")
        if not client_nonce:
            raise ScramError("SCRAM client-first message has no nonce")
        self._gs2_header = f"{flag},{authzid},"
        self._client_first_bare = bare
        self._nonce = client_nonce + _b64(secrets.token_bytes(18))
        self._server_first = f"r={self._nonce},s={_b64(self._salt)},i={self._iterations}"
        return self._server_first

    def final(self, client_final: str) -> str:
        without_proof, sep, proof_b64 = client_final.rpartition(",p=")
        if not sep:
            raise ScramError("SCRAM client-final message has no proof")
        fields = _attributes(without_proof)
        if fields.get("c") != _b64(self._gs2_header.encode()):
            raise ScramError("SCRAM channel binding data does not match")
        if fields.get("r") != self._nonce:
            raise ScramError("SCRAM nonce does not match")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise ScramError("SCRAM proof is not valid base64") from None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = hmac.digest(self._stored_key, auth_message, "sha256")
        if len(proof) != len(signature):
            raise ScramError("SCRAM proof has the wrong length")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._stored_key):
            raise ScramError("SCRAM proof does not match the password")
        return "v=" + _b64(hmac.digest(self._server_key, auth_message, "sha256"))
