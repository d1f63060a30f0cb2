"""Prometheus metrics of a server and its event loop, in the text exposition format.

::

    from uringws import metrics

    def process_request(ws, request):
        if request.path == "/metrics":
            return ws.respond(200, [("Content-Type", metrics.CONTENT_TYPE)], metrics.render(server))

Nothing here runs per message. Each connection's sans-I/O core counts its messages and bytes in plain ints,
the loop's transports count the send path (``loop.send_stats``), and the server folds a connection's totals
into its `ServerStats` once, when the connection ends; `collect` adds up the live connections when scraped.
No dependency: the format is a few lines of text (``prometheus_client`` users can wrap `collect`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .server import Server
    from .ws.connection import Connection

__all__ = ["CONTENT_TYPE", "BroadcastStats", "Family", "ServerStats", "broadcast_stats", "collect", "render", "summary"]

#: The Content-Type of `render`'s output (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class BroadcastStats:
    """Frames that ``broadcast()`` wrote straight to transports, bypassing each connection's counters.

    Process-wide (``broadcast`` knows no server): one addition per ``broadcast()`` call, none per connection.
    """

    __slots__ = ("bytes", "messages")

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0


broadcast_stats = BroadcastStats()


class ServerStats:
    """One server's totals of the connections that ended, and of its failed opening handshakes."""

    __slots__ = ("bytes_in", "bytes_out", "closed", "handshake_failures", "http_responses", "messages_in",
                 "messages_out")

    def __init__(self) -> None:
        self.closed: dict[int, int] = {}  # close code -> WebSocket connections closed with it
        self.handshake_failures: dict[str, int] = {}  # reason -> connections that never opened
        self.http_responses: dict[int, int] = {}  # status -> plain HTTP requests answered (process_request)
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def handshake_failed(self, reason: str) -> None:
        self.handshake_failures[reason] = self.handshake_failures.get(reason, 0) + 1

    def connection_lost(self, conn: Connection) -> None:
        """Fold an ended connection in (the server calls this once per connection)."""
        proto = conn.proto
        if proto is not None:
            code = conn.close_code or 1006
            self.closed[code] = self.closed.get(code, 0) + 1
            self.messages_in += proto.messages_in
            self.messages_out += proto.messages_out
            self.bytes_in += proto.bytes_in
            self.bytes_out += conn._written  # frame bytes the connection handed to its transport
            return
        request, response = conn.request, conn.response
        upgrade = request is not None and "websocket" in (request.headers.get("Upgrade") or "").lower()
        if request is not None and response is not None and not upgrade:
            self.http_responses[response.status] = self.http_responses.get(response.status, 0) + 1
        elif response is not None:
            # A malformed request, or an upgrade refused by the handshake or by process_request (401, 403...).
            self.handshake_failed(f"http_{response.status}")
        elif _deadline_passed(conn):
            self.handshake_failed("timeout")
        else:
            self.handshake_failed("closed")  # the client went away before the handshake was answered


def _deadline_passed(conn: Connection) -> bool:
    deadline = conn._open_deadline
    return deadline is not None and conn.loop.time() >= deadline


@dataclass
class Family:
    """One metric: name, type ("counter" or "gauge"), help, and samples of (labels, value)."""

    name: str
    type: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def collect(servers: Server | Iterable[Server] = (), loop: asyncio.AbstractEventLoop | None = None) -> list[Family]:
    """The current values: servers' connection and message totals, and ``loop``'s send path (if it counts one)."""
    servers = [servers] if not isinstance(servers, Iterable) else list(servers)  # read twice below
    stats = ServerStats()
    open_now = 0
    for server in servers:
        done = server.stats
        for code, n in done.closed.items():
            stats.closed[code] = stats.closed.get(code, 0) + n
        for reason, n in done.handshake_failures.items():
            stats.handshake_failures[reason] = stats.handshake_failures.get(reason, 0) + n
        for status, n in done.http_responses.items():
            stats.http_responses[status] = stats.http_responses.get(status, 0) + n
        stats.messages_in += done.messages_in
        stats.messages_out += done.messages_out
        stats.bytes_in += done.bytes_in
        stats.bytes_out += done.bytes_out
        for conn in list(server.connections):
            proto = conn.proto
            if proto is None:
                continue
            if not conn.lost.done():
                open_now += 1
            stats.messages_in += proto.messages_in
            stats.messages_out += proto.messages_out
            stats.bytes_in += proto.bytes_in
            stats.bytes_out += conn._written
    closed_total = sum(stats.closed.values())
    backend = getattr(loop, "backend", "asyncio") if loop is not None else "asyncio"
    families = [
        Family("uringws_info", "gauge", "Version and event loop backend of this process.",
               [({"version": __version__, "backend": str(backend)}, 1)]),
        Family("uringws_connections_open", "gauge", "WebSocket connections open now.", [({}, open_now)]),
        Family("uringws_connections_opened_total", "counter", "WebSocket connections that completed the handshake.",
               [({}, closed_total + open_now)]),
        Family("uringws_connections_closed_total", "counter",
               "WebSocket connections closed, by the peer's close code (1006: no close frame).",
               [({"code": str(code)}, n) for code, n in sorted(stats.closed.items())]),
        Family("uringws_handshake_failures_total", "counter",
               "Connections that never opened, by reason: tls, tls_timeout, timeout, closed, http_<status>.",
               [({"reason": reason}, n) for reason, n in sorted(stats.handshake_failures.items())]),
        Family("uringws_http_responses_total", "counter", "Plain HTTP requests answered, by status.",
               [({"code": str(code)}, n) for code, n in sorted(stats.http_responses.items())]),
        Family("uringws_messages_received_total", "counter", "WebSocket messages received.",
               [({}, stats.messages_in)]),
        Family("uringws_messages_sent_total", "counter", "WebSocket messages sent (broadcast ones included).",
               [({}, stats.messages_out + broadcast_stats.messages)]),
        Family("uringws_received_bytes_total", "counter", "WebSocket frame bytes received (after TLS).",
               [({}, stats.bytes_in)]),
        Family("uringws_sent_bytes_total", "counter", "WebSocket frame bytes sent (before TLS).",
               [({}, stats.bytes_out + broadcast_stats.bytes)]),
    ]
    budgets = [server.budget for server in servers if server.budget is not None]
    if budgets:  # only servers given max_memory have one: no zeros that look like a budget
        families += [
            Family("uringws_memory_budget_limit_bytes", "gauge",
                   "Memory budget for messages being received (max_memory), all servers with one.",
                   [({}, sum(b.limit or 0 for b in budgets))]),
            Family("uringws_memory_budget_used_bytes", "gauge", "Bytes of the memory budget reserved now.",
                   [({}, sum(b.used for b in budgets))]),
            Family("uringws_memory_budget_peak_bytes", "gauge",
                   "The most bytes of the memory budget reserved at once (summed over servers).",
                   [({}, sum(b.peak for b in budgets))]),
            Family("uringws_memory_budget_refused_total", "counter",
                   "Messages refused for want of budget (each failed its connection with 1009).",
                   [({}, sum(b.refused for b in budgets))]),
        ]
    # The epoll backend's loop has SendStats too, but its transports are asyncio's, which count nothing: no zeros
    # that look like a healthy send path.
    send = getattr(loop, "send_stats", None) if backend == "io_uring" else None
    if send is not None:
        families += [
            Family("uringws_send_syscalls_total", "counter",
                   "Sends: path=ring (SEND/SENDMSG on the ring), path=direct (send(2) while nothing was queued).",
                   [({"path": "ring"}, send.sends), ({"path": "direct"}, send.direct_sends)]),
            Family("uringws_send_short_total", "counter",
                   "Sends the kernel took only part of; the rest went again, in order.",
                   [({"path": "ring"}, send.short_sends), ({"path": "direct"}, send.direct_short)]),
            Family("uringws_send_resent_bytes_total", "counter", "Bytes a short send left behind, sent again.",
                   [({}, send.resent_bytes)]),
            Family("uringws_send_eagain_total", "counter", "Ring sends that found the socket full (EAGAIN).",
                   [({}, send.eagain)]),
            Family("uringws_send_retries_total", "counter", "Ring sends interrupted (EINTR, ECANCELED), resubmitted.",
                   [({}, send.retries)]),
            Family("uringws_send_queue_max_bytes", "gauge",
                   "The most bytes one connection had waiting for the kernel when a send left.",
                   [({}, send.max_queued)]),
        ]
    return families


def summary(servers: Server | Iterable[Server] = (), loop: asyncio.AbstractEventLoop | None = None) -> dict[str, float]:
    """`collect` as one flat dict, labelled samples summed (``send_short`` adds the ring's and the direct ones)."""
    short = {"uringws_send_syscalls_total": "sends", "uringws_send_short_total": "send_short"}
    out: dict[str, float] = {}
    for family in collect(servers, loop):
        if family.name == "uringws_info":
            continue
        key = short.get(family.name) or family.name.removeprefix("uringws_").removesuffix("_total")
        out[key] = sum(value for _, value in family.samples)
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _lines(families: Iterable[Family]) -> Iterator[str]:
    for family in families:
        yield f"# HELP {family.name} {family.help}"
        yield f"# TYPE {family.name} {family.type}"
        for labels, value in family.samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            yield f"{family.name}{{{label_text}}} {value}" if label_text else f"{family.name} {value}"


def render(servers: Server | Iterable[Server] = (), loop: Any = None) -> bytes:
    """`collect` in the Prometheus text format (serve it with Content-Type `CONTENT_TYPE`).

    ``loop`` defaults to the running loop, if any.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
    return ("\n".join(_lines(collect(servers, loop))) + "\n").encode()
