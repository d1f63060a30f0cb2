"""Each private CPython internal bound in uringws.loop.compat still exists on this Python, with the shape we use.

One test per internal: a new CPython that renames or reshapes one fails here, naming it, instead of somewhere in
the middle of a connection. The bindings must be the stdlib's own objects (not the public fallbacks) on every
checked version.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
import ssl
import sys
from asyncio import base_events, constants, futures, selector_events, sslproto, transports, unix_events
from typing import Any

import pytest

from uringws.loop import compat

pytestmark = pytest.mark.skipif(not compat.CHECKED, reason="internals are only promised on the checked versions")


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_running_on_a_checked_version() -> None:
    assert sys.version_info[:2] in compat.CHECKED_VERSIONS
    assert compat.LEAN_RUN_ONCE


def test_unix_selector_event_loop() -> None:
    cls = unix_events._UnixSelectorEventLoop  # type: ignore[attr-defined]
    assert compat.UnixSelectorEventLoop is cls
    assert issubclass(cls, selector_events.BaseSelectorEventLoop)
    # The hooks EventLoop overrides or calls, with the parameters it passes.
    assert _params(cls._make_socket_transport)[:4] == ["self", "sock", "protocol", "waiter"]
    assert {"extra", "server"} <= set(_params(cls._make_socket_transport))
    assert {"server_side", "server_hostname", "extra", "server", "ssl_handshake_timeout",
            "ssl_shutdown_timeout"} <= set(_params(cls._make_ssl_transport))
    assert _params(cls._sendfile_native) == ["self", "transp", "file", "offset", "count"]
    assert _params(cls._sendfile_fallback) == ["self", "transp", "file", "offset", "count"]
    assert _params(cls._ensure_fd_no_transport) == ["self", "fd"]
    assert _params(cls._process_events) == ["self", "event_list"]
    assert _params(cls._run_once) == ["self"]
    assert _params(cls._write_to_self) == ["self"]


def test_loop_attributes_of_the_run_once_copy() -> None:
    loop = asyncio.SelectorEventLoop()
    try:
        for name in compat.LOOP_ATTRIBUTES:
            assert hasattr(loop, name), name
        assert type(loop._ready).__name__ == "deque"  # type: ignore[attr-defined]
        assert isinstance(loop._scheduled, list)  # type: ignore[attr-defined]
        timer = loop.call_later(10, print)
        assert loop._scheduled == [timer]  # type: ignore[attr-defined]  # the heap holds the TimerHandles
        for name in compat.TIMER_HANDLE_ATTRIBUTES:
            assert hasattr(timer, name), name
        handle = loop.call_soon(print)
        assert list(loop._ready) == [handle]  # type: ignore[attr-defined]
        for name in compat.HANDLE_ATTRIBUTES:
            assert hasattr(handle, name), name
        timer.cancel()
        handle.cancel()
    finally:
        loop.close()
    assert base_events._MIN_SCHEDULED_TIMER_HANDLES == compat.MIN_SCHEDULED_TIMER_HANDLES  # type: ignore[attr-defined]
    assert (base_events._MIN_CANCELLED_TIMER_HANDLES_FRACTION  # type: ignore[attr-defined]
            == compat.MIN_CANCELLED_TIMER_HANDLES_FRACTION)
    assert base_events.MAXIMUM_SELECT_TIMEOUT == compat.MAXIMUM_SELECT_TIMEOUT  # type: ignore[attr-defined]


def test_selector_socket_transport() -> None:
    cls = selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    assert compat.SelectorSocketTransport is cls
    assert _params(cls._call_connection_lost) == ["self", "exc"]
    assert "_read_ready_cb" in inspect.getsource(cls.__init__)  # the self-reference our subclass drops


def test_flow_control_mixin() -> None:
    cls = transports._FlowControlMixin  # type: ignore[attr-defined]
    assert compat.FlowControlMixin is cls
    assert issubclass(cls, asyncio.Transport)
    assert {"_loop", "_protocol_paused"} <= set(cls.__slots__)
    assert _params(cls.__init__) == ["self", "extra", "loop"]


def test_sendfile_mode() -> None:
    mode = constants._SendfileMode  # type: ignore[attr-defined]
    assert compat.SendfileMode is mode
    assert {m.name for m in mode} >= {"UNSUPPORTED", "TRY_NATIVE", "FALLBACK"}


def test_sendfile_fallback_protocol() -> None:
    cls = base_events._SendfileFallbackProtocol  # type: ignore[attr-defined]
    assert compat.SendfileFallbackProtocol is cls
    assert _params(cls.__init__) == ["self", "transp"]
    for name in ("drain", "restore"):
        assert inspect.iscoroutinefunction(getattr(cls, name)), name
    for name in ("pause_writing", "resume_writing", "connection_lost"):
        assert callable(getattr(cls, name)), name
    # What it reads from the transport (ours provide these).
    source = inspect.getsource(cls.__init__)
    assert "_protocol_paused" in source and "_loop" in source


def test_set_nodelay() -> None:
    assert compat.set_nodelay is base_events._set_nodelay  # type: ignore[attr-defined]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        compat.set_nodelay(sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_set_result_unless_cancelled() -> None:
    assert compat.set_result_unless_cancelled is futures._set_result_unless_cancelled  # type: ignore[attr-defined]
    loop = asyncio.new_event_loop()
    try:
        fut, cancelled = loop.create_future(), loop.create_future()
        cancelled.cancel()
        compat.set_result_unless_cancelled(fut, 7)
        compat.set_result_unless_cancelled(cancelled, 7)
        assert fut.result() == 7 and cancelled.cancelled()
    finally:
        loop.close()


def test_server_attach_detach() -> None:
    expected = ["self", "transport"] if compat.SERVER_ATTACH_TAKES_TRANSPORT else ["self"]
    assert _params(base_events.Server._attach) == expected  # type: ignore[attr-defined]
    assert _params(base_events.Server._detach) == expected  # type: ignore[attr-defined]


def test_ssl_protocol_app_transport() -> None:
    loop = asyncio.new_event_loop()
    try:
        proto = sslproto.SSLProtocol(loop, asyncio.Protocol(), ssl.create_default_context(), None)
        app_transport = compat.ssl_protocol_app_transport(proto)
        assert isinstance(app_transport, sslproto._SSLProtocolTransport)  # type: ignore[attr-defined]
        assert app_transport._ssl_protocol is proto
    finally:
        loop.close()


def test_sslobject_inner_object() -> None:
    ctx = ssl.create_default_context()
    sslobj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="localhost")
    inner = compat.sslobject_fast(sslobj)
    assert inner is sslobj._sslobj  # type: ignore[attr-defined]
    # SSLObject.read/write/pending are one-line wrappers around these, with the same arguments.
    for name in ("read", "write", "pending", "do_handshake"):
        assert callable(getattr(inner, name)), name
        assert f"self._sslobj.{name}(" in inspect.getsource(getattr(ssl.SSLObject, name)), name
    assert inner.pending() == 0
    with pytest.raises(ssl.SSLWantReadError):
        inner.read(10)

    class Custom(ssl.SSLObject):
        pass

    ctx.sslobject_class = Custom
    custom = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="localhost")
    assert compat.sslobject_fast(custom) is custom  # a subclass keeps its own methods


def test_no_other_module_binds_internals() -> None:
    """The loop and TLS modules get stdlib internals from compat only (so the tests above cover them all)."""
    import uringws.loop.events
    import uringws.loop.selector
    import uringws.loop.transports
    import uringws.tls.loopmixin
    import uringws.tls.protocol

    private = re.compile(
        r"\b(asyncio|base_events|selector_events|unix_events|transports|constants|futures|sslproto|ssl)\._[A-Za-z]"
        r"|from asyncio\.\w+ import _|_sslobj\._sslobj|sys\.version_info"
    )
    for module in (uringws.loop.events, uringws.loop.selector, uringws.loop.transports, uringws.tls.loopmixin,
                   uringws.tls.protocol):
        for number, line in enumerate(inspect.getsource(module).splitlines(), 1):
            code = line.split("#")[0]
            assert not private.search(code), f"{module.__name__}:{number}: {line.strip()}"


def test_get_running_loop_or_none() -> None:
    assert compat.get_running_loop_or_none is asyncio.events._get_running_loop
    assert compat.get_running_loop_or_none() is None  # no loop runs here: None, not an error

    async def inside() -> object:
        return compat.get_running_loop_or_none()

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(inside()) is loop
    finally:
        loop.close()
