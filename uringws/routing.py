"""Route connections to handlers by request path, with path parameters: ``Router`` and ``route``.

::

    async def room(ws, name):              # "/rooms/lobby" -> name="lobby"
        ...

    async def user(ws, id):                # "/users/42" -> id=42 (an int)
        ...

    async with uringws.route({"/rooms/{name}": room, "/users/{id:int}": user}, "127.0.0.1", 8765) as server:
        await server.serve_forever()

A pattern is a path whose ``{name}`` parts match one path segment (``{name:int}``: digits, passed as an int;
``{name:path}``: the rest of the path, slashes included). Routes are tried in the order given; the query string is
ignored. A path no route matches gets HTTP 404 before any upgrade, or what ``not_found(ws, request)`` returns.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .server import Server, serve
from .ws.connection import Connection, HTTPAnswer
from .ws.handshake import Request

__all__ = ["Router", "route"]

Handler = Callable[..., Awaitable[Any]]
NotFound = Callable[[Connection, Request], "HTTPAnswer | Awaitable[HTTPAnswer]"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(str|int|path))?\}")
_CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "str": (r"[^/]+", str),
    "int": (r"[0-9]+", int),
    "path": (r".+", str),
}


def _compile(pattern: str) -> tuple[re.Pattern[str], dict[str, Callable[[str], Any]]]:
    if not pattern.startswith("/"):
        raise ValueError(f"route {pattern!r} must start with '/'")
    regex, converters, pos = "", {}, 0
    for match in _PARAM.finditer(pattern):
        name, kind = match.group(1), match.group(2) or "str"
        if name in converters:
            raise ValueError(f"route {pattern!r} names {{{name}}} twice")
        part, convert = _CONVERTERS[kind]
        regex += re.escape(pattern[pos : match.start()]) + f"(?P<{name}>{part})"
        converters[name] = convert
        pos = match.end()
    rest = pattern[pos:]
    if "{" in rest or "}" in rest:
        raise ValueError(f"route {pattern!r} has a malformed parameter (use {{name}}, {{name:int}}, {{name:path}})")
    return re.compile(regex + re.escape(rest)), converters


def _not_found(connection: Connection, request: Request) -> HTTPAnswer:
    return 404, [], b"Not Found\n"


class Router:
    """Dispatch connections to handlers by request path.

    ``async with serve(router.handler, host, port, process_request=router.process_request)`` (or
    :func:`route`). A handler is called as ``handler(ws, **params)``; the parameters are also in
    ``ws.path_params``.
    """

    def __init__(self, routes: Mapping[str, Handler], *, not_found: NotFound | None = None) -> None:
        self.routes = dict(routes)
        self.not_found = not_found or _not_found
        self._compiled = [(*_compile(pattern), handler) for pattern, handler in self.routes.items()]

    def match(self, path: str) -> tuple[Handler, dict[str, Any]] | None:
        """The handler and parameters for ``path`` (query string ignored), or None."""
        path = path.partition("?")[0]
        for regex, converters, handler in self._compiled:
            found = regex.fullmatch(path)
            if found is not None:
                return handler, {name: converters[name](value) for name, value in found.groupdict().items()}
        return None

    def process_request(self, connection: Connection, request: Request) -> HTTPAnswer | Awaitable[HTTPAnswer] | None:
        """Answer a path no route matches (404, or ``not_found``); let the others upgrade."""
        found = self.match(request.path)
        if found is None:
            return self.not_found(connection, request)
        connection.path_params = found[1]  # type: ignore[attr-defined]  # Connection keeps a __dict__ for this
        return None

    async def handler(self, connection: Connection) -> None:
        found = self.match(connection.request.path if connection.request is not None else "")
        assert found is not None, "Router.handler runs only for paths process_request let through"
        handler, params = found
        await handler(connection, **params)


def route(
    routes: Mapping[str, Handler],
    host: str | None = None,
    port: int | None = None,
    *,
    not_found: NotFound | None = None,
    **kwargs: Any,
) -> Server:
    """``serve()`` with a :class:`Router` over ``routes``; takes ``serve``'s other arguments."""
    router = Router(routes, not_found=not_found)
    if "process_request" in kwargs:
        raise TypeError("route() sets process_request itself; use Router with your own process_request instead")
    return serve(router.handler, host, port, process_request=router.process_request, **kwargs)
