"""HTTP Basic authentication of the opening handshake (RFC 7617), as websockets' ``basic_auth``.

::

    async with uringws.serve(handler, host, port, ssl=ctx,
                             process_request=basic_auth(realm="chat", credentials=("alice", "s3cret"))):
        ...                                       # in the handler: ws.username == "alice"

Basic credentials travel in clear text inside the request: use it over wss:// only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .ws.connection import Connection, HTTPAnswer
from .ws.handshake import Request

__all__ = ["basic_auth", "parse_basic_authorization"]

CheckCredentials = Callable[[str, str], "bool | Awaitable[bool]"]


def parse_basic_authorization(value: str) -> tuple[str, str]:
    """Username and password of an ``Authorization: Basic ...`` header value; ValueError if it is not one."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        raise ValueError("not Basic credentials")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("malformed Basic credentials") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise ValueError("Basic credentials without ':'")
    return username, password


def basic_auth(
    realm: str = "",
    credentials: tuple[str, str] | Iterable[tuple[str, str]] | None = None,
    check_credentials: CheckCredentials | None = None,
) -> Callable[[Connection, Request], Awaitable[HTTPAnswer | None]]:
    """A ``process_request`` that answers 401 unless the request carries valid Basic credentials.

    Give either ``credentials`` (one ``(username, password)`` pair or several) or ``check_credentials(username,
    password)`` returning (or resolving to) a bool. On success the username is ``ws.username``.
    """
    if (credentials is None) == (check_credentials is None):
        raise TypeError("give exactly one of credentials and check_credentials")
    if credentials is not None:
        one_pair = (
            isinstance(credentials, tuple) and len(credentials) == 2 and all(isinstance(c, str) for c in credentials)
        )
        pairs = [credentials] if one_pair else list(credentials)
        if not pairs or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
            raise TypeError("credentials must be a (username, password) pair or an iterable of them")
        table = {username.encode(): password.encode() for username, password in pairs}  # type: ignore[union-attr]

        def check_table(username: str, password: str) -> bool:
            expected = table.get(username.encode())
            # compare_digest against a dummy for an unknown user too, so timing tells nothing about names.
            return hmac.compare_digest(expected or b"\0" * 64, password.encode()) and expected is not None

        check: CheckCredentials = check_table
    else:
        assert check_credentials is not None
        check = check_credentials
    challenge = [("WWW-Authenticate", f'Basic realm="{_quote(realm)}", charset="UTF-8"')]

    async def process_request(connection: Connection, request: Request) -> HTTPAnswer | None:
        header = request.headers.get("Authorization")
        if header is None:
            return 401, challenge, b"Missing credentials\n"
        try:
            username, password = parse_basic_authorization(header)
        except ValueError:
            return 401, challenge, b"Unsupported credentials\n"
        valid: Any = check(username, password)
        if isinstance(valid, Awaitable):
            valid = await valid
        if not valid:
            return 401, challenge, b"Invalid credentials\n"
        connection.username = username  # type: ignore[attr-defined]  # Connection keeps a __dict__ for this
        return None

    return process_request


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
