"""Every private CPython internal uringws relies on (asyncio, ssl), in one place, checked for 3.11-3.13.

The loop and TLS layers plug into asyncio where it has no public hook: a stream transport asyncio's sendfile
fallback accepts, servers counting their connections, the loop's iteration. Each internal is bound here once, at
import (hot paths then use a module global, at no extra cost per call), with the Python versions it was
checked against; ``tests/loop/test_compat.py`` fails if one disappears or changes shape. On a version outside
``CHECKED_VERSIONS`` the optional ones fall back to public behaviour (see each name); the required ones
raise ImportError at import, naming the internal, instead of failing later in the middle of a connection.

Internals used as attributes of loop, transport and handle objects (not importable names) are listed here too,
so that the tests check them: see ``LOOP_ATTRIBUTES`` and friends.
"""

from __future__ import annotations

import socket
import ssl
import sys
from asyncio import (
    base_events,
    constants,
    events,
    format_helpers,
    futures,
    selector_events,
    sslproto,
    transports,
    unix_events,
)
from typing import Any

__all__ = [
    "CHECKED",
    "CHECKED_VERSIONS",
    "HANDLE_SLOTS",
    "LEAN_RUN_ONCE",
    "MAXIMUM_SELECT_TIMEOUT",
    "MIN_CANCELLED_TIMER_HANDLES_FRACTION",
    "MIN_SCHEDULED_TIMER_HANDLES",
    "SERVER_ATTACH_TAKES_TRANSPORT",
    "FlowControlMixin",
    "SelectorSocketTransport",
    "SendfileFallbackProtocol",
    "SendfileMode",
    "UnixSelectorEventLoop",
    "format_callback_source",
    "get_running_loop_or_none",
    "set_nodelay",
    "set_result_unless_cancelled",
    "ssl_protocol_app_transport",
    "sslobject_fast",
]

#: the CPython versions (major, minor) whose internals these bindings were checked against
CHECKED_VERSIONS = ((3, 11), (3, 12), (3, 13))
CHECKED = sys.version_info[:2] in CHECKED_VERSIONS


def _required(module: Any, name: str) -> Any:
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(
            f"uringws needs {module.__name__}.{name}, which Python {sys.version.split()[0]} does not have; "
            f"uringws supports Python {CHECKED_VERSIONS[0][0]}.{CHECKED_VERSIONS[0][1]}-"
            f"{CHECKED_VERSIONS[-1][0]}.{CHECKED_VERSIONS[-1][1]}"
        ) from None


# -- asyncio.unix_events / selector_events: the loop and transport classes we subclass (no fallback) -------------
#: asyncio's unix selector loop, base of uringws.loop.EventLoop (overrides _run_once, _make_socket_transport,
#: _make_ssl_transport, _sendfile_native, _sendfile_fallback, _write_to_self; calls _ensure_fd_no_transport,
#: _process_events; reads _transports, _selector, _ready, _scheduled, ...: LOOP_ATTRIBUTES)
UnixSelectorEventLoop: Any = _required(unix_events, "_UnixSelectorEventLoop")
#: asyncio's selector stream transport (the epoll backend's); we subclass it to override _call_connection_lost
SelectorSocketTransport: Any = _required(selector_events, "_SelectorSocketTransport")

# -- asyncio.transports / constants: what loop.sendfile() and start_tls() look at --------------------------------
#: base of every transport asyncio's sendfile fallback accepts (it checks isinstance); slots _loop, _protocol_paused
FlowControlMixin: Any = _required(transports, "_FlowControlMixin")
#: values of a transport's _sendfile_compatible (TRY_NATIVE, FALLBACK, UNSUPPORTED)
SendfileMode: Any = _required(constants, "_SendfileMode")

# -- asyncio.base_events -------------------------------------------------------------------------------------------
#: asyncio's sendfile fallback's temporary protocol (swaps itself in, pauses reading, drain(), restore())
SendfileFallbackProtocol: Any = _required(base_events, "_SendfileFallbackProtocol")


def _set_nodelay_public(sock: socket.socket) -> None:
    if (sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
            and sock.proto == socket.IPPROTO_TCP):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: TCP_NODELAY on TCP sockets, as asyncio's transports set it (fallback: the same setsockopt)
set_nodelay: Any = getattr(base_events, "_set_nodelay", _set_nodelay_public)

# The constants of asyncio's _run_once, which EventLoop replaces with a leaner copy of the same algorithm on checked
# versions only (3.13 reshaped the timeout clamp, not the algorithm); elsewhere it runs asyncio's own.
LEAN_RUN_ONCE = CHECKED
MIN_SCHEDULED_TIMER_HANDLES: int = getattr(base_events, "_MIN_SCHEDULED_TIMER_HANDLES", 100)
MIN_CANCELLED_TIMER_HANDLES_FRACTION: float = getattr(base_events, "_MIN_CANCELLED_TIMER_HANDLES_FRACTION", 0.5)
MAXIMUM_SELECT_TIMEOUT: float = getattr(base_events, "MAXIMUM_SELECT_TIMEOUT", 24 * 3600)
#: what the _run_once copy reads and writes on the loop, on timer handles and on handles
LOOP_ATTRIBUTES = ("_scheduled", "_ready", "_timer_cancelled_count", "_stopping", "_clock_resolution", "_debug",
                   "_selector", "_transports")
TIMER_HANDLE_ATTRIBUTES = ("_when", "_scheduled", "_cancelled")
HANDLE_ATTRIBUTES = ("_cancelled", "_run")
#: every slot Handle.__init__() sets (EventLoop.call_soon() builds its handles itself outside debug mode)
HANDLE_SLOTS = ("_callback", "_args", "_cancelled", "_loop", "_source_traceback", "_repr", "_context")
#: the words of Handle._run()'s report of a failed callback (EventLoop._run_once() runs handles itself)
format_callback_source: Any = _required(format_helpers, "_format_callback_source")
#: this thread's running loop or None, without raising (C in _asyncio): the compiled Connection.__anext__ makes
#: its waiter with asyncio.Future() (no keyword dict per message) when the connection's loop is the running one
get_running_loop_or_none: Any = _required(events, "_get_running_loop")

#: Server._attach()/_detach() take the transport from 3.13 on (before: no argument); a ring transport calls them
#: so that Server.close()/wait_closed() count its connections
SERVER_ATTACH_TAKES_TRANSPORT = sys.version_info >= (3, 13)


def _set_result_unless_cancelled_public(fut: Any, result: Any) -> None:
    if not fut.cancelled():
        fut.set_result(result)


#: set a waiter's result unless it was cancelled (fallback: the same two lines)
set_result_unless_cancelled: Any = getattr(futures, "_set_result_unless_cancelled", _set_result_unless_cancelled_public)


# -- asyncio.sslproto ------------------------------------------------------------------------------------------------
def ssl_protocol_app_transport(protocol: sslproto.SSLProtocol) -> Any:
    """The application's transport of asyncio's SSLProtocol (its ``_app_transport``; no public accessor)."""
    return protocol._app_transport


# -- ssl ---------------------------------------------------------------------------------------------------------------
def sslobject_fast(sslobj: ssl.SSLObject) -> Any:
    """What to call read()/write()/pending() on: ``ssl.SSLObject``'s are one-line wrappers around the same
    methods of its ``_sslobj`` (3.11-3.13), so that object saves a Python frame per record. A subclass (a
    context's sslobject_class), or an unchecked version, keeps the public object."""
    if CHECKED and type(sslobj) is ssl.SSLObject:
        inner = getattr(sslobj, "_sslobj", None)
        if inner is not None:
            return inner
    return sslobj
