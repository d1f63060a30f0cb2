"""TLS over any asyncio stream transport, with memory BIOs and no per-connection buffers while idle.

:class:`TLSProtocol` sits between a byte-stream transport (TCP, below) and an application protocol (above),
with the same constructor and loop contract as CPython's ``asyncio.sslproto.SSLProtocol`` (3.11+), so an
event loop can use it from ``_make_ssl_transport`` (see :func:`make_ssl_transport`) and ``start_tls`` (see
:func:`start_tls`).  The application sees a :class:`TLSTransport`.

Why it exists (docs/design.md §1): every encrypted byte must reach the peer exactly once and in order.  This
layer writes ALL of its output (handshake, records, alerts, close_notify) through the one transport's
``write()``, in the order OpenSSL produced it, and never holds output back in a second queue.

Memory: asyncio keeps a 256 KiB receive buffer per connection.  Here the receive buffer and the plaintext
buffer are shared by all connections of a thread (:class:`_SharedBuffers`); a connection owns only its
``SSLObject`` and two ``MemoryBIO`` objects (or the compiled engine, :mod:`uringws.tls.engine`, which offers the
same calls), which are empty while idle (CPython sets ``SSL_MODE_RELEASE_BUFFERS``, so OpenSSL frees its record
buffers too; the compiled engine lets up to 64 busy connections keep theirs until they have been idle for a
second, see docs/design.md §9).  Plaintext waiting behind a paused
TCP transport is kept as the application's own (immutable) objects and encrypted only when the transport can
take it.

Coalescing: on a loop whose selector has a ``before_wait`` hook list (uringws's io_uring loop), application
writes below ``COALESCE_LIMIT`` are kept as plaintext until the loop is about to wait in the kernel, then
encrypted together: one SSL_write (one TLS record) per 16 KiB instead of one per write, one transport write for
the lot.  They count as write-buffer bytes; close() sends them before close_notify; abort() drops them.  On any
other loop every write is encrypted and handed down at once.

Loop integration: ``TLSProtocol`` is a ``BufferedProtocol`` towards the transport (``data_received`` works
too).  ``get_buffer()`` lends a per-thread shared buffer until ``buffer_updated()``; a transport that keeps
a buffer across other callbacks (e.g. a recv submitted to the kernel) still works, because a second lender
gets a private ~16 KiB buffer, but then each such connection holds one: a completion-based loop should
receive into its own (provided) buffers and copy into ``get_buffer()`` right before ``buffer_updated()``, or,
better, pass a view of its buffer to ``received_view()`` (uringws's ring transport does): it is fed to OpenSSL
during the call and not kept, which saves that copy.
The transport must implement ``write``, ``close``, ``abort``, ``pause_reading``, ``resume_reading``,
``get_extra_info``, ``get_write_buffer_size`` and call ``pause_writing``/``resume_writing`` on us.

Errors: handshake failures, TLS alerts and record errors close the connection, are logged on the
``uringws.tls`` logger with the peer address, and reach the application as the ``ssl.SSLError`` that
OpenSSL raised (waiter exception during the handshake, ``connection_lost(exc)`` afterwards).  A TCP EOF
without close_notify at a record boundary is reported like asyncio (``eof_received()`` then
``connection_lost(None)``); an EOF in the middle of a record is an error, :class:`TLSTruncatedError`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import threading
from typing import TYPE_CHECKING, Any

from ..loop import compat
from .engine import CompiledSSLObject, new_engine
from .engine import receive_type as _Receive
from .engine import scan_records as _engine_scan_records
from .engine import send_type as _Send

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "WRITE_HIGH_WATER",
    "TLSProtocol",
    "TLSTransport",
    "TLSTruncatedError",
    "make_ssl_transport",
    "start_tls",
]

logger = logging.getLogger("uringws.tls")
_sslobject_fast = compat.sslobject_fast

# Limits and sizes, in one place (defaults as asyncio where asyncio has one).
HANDSHAKE_TIMEOUT = 60.0  # seconds, asyncio.constants.SSL_HANDSHAKE_TIMEOUT
SHUTDOWN_TIMEOUT = 30.0  # seconds, asyncio.constants.SSL_SHUTDOWN_TIMEOUT
WRITE_HIGH_WATER = 64 * 1024  # default high-water mark of the write buffer; low = high // 4
RECV_BUFFER_SIZE = 256 * 1024  # shared per thread: large reads cost no per-connection memory
PRIVATE_RECV_SIZE = 16 * 1024 + 512  # fallback when the shared buffer is lent out: about one TLS record
PLAINTEXT_BUFFER_SIZE = 256 * 1024  # shared per thread: decrypted bytes gathered for one data_received()
WRITE_CHUNK = 256 * 1024  # larger writes are encrypted and handed down in pieces of this size
# Plaintext writes shorter than this wait (on a loop with a before-wait hook) until the loop is about to wait for
# the kernel, and leave together: one SSL_write, i.e. one TLS record, per 16 KiB of coalesced plaintext.
COALESCE_LIMIT = 16 * 1024
RECORD_PLAINTEXT = 16 * 1024  # TLS maximum plaintext per record: joined small writes fill at most one
_MAX_RECORD_BODY = 16 * 1024 + 2048  # TLS 1.2's ciphertext limit (RFC 5246 6.2.3); 1.3's is lower
_WARN_WRITES_AFTER_CLOSE = 5  # asyncio.constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES

# Connection states.
_UNWRAPPED = 0  # before connection_made()
_HANDSHAKE = 1
_WRAPPED = 2  # handshake done, application data flows
_SHUTDOWN = 3  # our close_notify sent, waiting for the peer's (or EOF, or the shutdown timeout)
_CLOSED = 4

# Application protocol states.
_APP_INIT = 0
_APP_MADE = 1
_APP_EOF = 2
_APP_LOST = 3


class TLSTruncatedError(ssl.SSLEOFError):
    """The peer closed TCP in the middle of a TLS record: data was lost on the way."""


class _SharedBuffers:
    """Per-thread buffers shared by every :class:`TLSProtocol` of that thread.

    ``recv`` is lent by ``get_buffer()`` until ``buffer_updated()``; ``owner`` says to whom, so a loop that
    keeps a buffer across other callbacks (e.g. a completion-based recv) gets a private buffer instead of a
    shared one that another connection could overwrite.  ``plain`` is only used inside one synchronous call.
    """

    __slots__ = ("owner", "plain", "recv")

    def __init__(self) -> None:
        self.recv = memoryview(bytearray(RECV_BUFFER_SIZE))
        self.plain = memoryview(bytearray(PLAINTEXT_BUFFER_SIZE))
        self.owner: TLSProtocol | None = None


_thread_local = threading.local()


def _shared_buffers() -> _SharedBuffers:
    """Return this thread's shared buffers, creating them on first use."""
    try:
        return _thread_local.buffers
    except AttributeError:
        buffers = _thread_local.buffers = _SharedBuffers()
        return buffers


def _immutable(data: Any) -> bytes | memoryview:
    """Data that can be kept after write() returns: the app may reuse a bytearray, so copy anything mutable."""
    if type(data) is bytes:
        return data
    mv = memoryview(data)
    if mv.readonly and isinstance(mv.obj, bytes):
        return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
    return mv.tobytes()


def _flow_limits(high: int | None, low: int | None) -> tuple[int, int]:
    """asyncio's defaulting rules for (high, low) water marks."""
    if high is None:
        high = WRITE_HIGH_WATER if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low


if TYPE_CHECKING:
    _FlowControlMixin = Any  # typeshed does not describe asyncio's private transport base
else:
    _FlowControlMixin = compat.FlowControlMixin


class TLSTransport(_FlowControlMixin, asyncio.Transport):
    """The transport the application protocol sees; every call is forwarded to its :class:`TLSProtocol`.

    A ``_FlowControlMixin`` with ``_loop`` and ``_protocol_paused``, as asyncio's SSL transport is, because
    ``loop.sendfile()``'s fallback refuses any other transport; flow control itself is the TLSProtocol's.
    """

    __slots__ = ("__weakref__", "_tls")

    # As asyncio's SSL transport: sendfile() reads the file and write()s it (the kernel cannot encrypt here), and
    # start_tls() may layer TLS over this transport.
    _sendfile_compatible = compat.SendfileMode.FALLBACK
    _start_tls_compatible = True

    def __init__(self, tls: TLSProtocol) -> None:
        asyncio.BaseTransport.__init__(self)  # not _FlowControlMixin's: its state is the TLSProtocol's
        self._tls = tls
        self._loop = tls._loop  # type: ignore[misc]  # a slot of _FlowControlMixin, which typeshed omits

    @property
    def _protocol_paused(self) -> bool:
        """pause_writing() told to the app (read by asyncio's sendfile fallback)."""
        return self._tls._app_write_paused

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """TLS extras (ssl_object, sslcontext, peercert, cipher, compression), else the TCP transport's."""
        return self._tls._get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._tls._set_app_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._tls._app

    def is_closing(self) -> bool:
        tls = self._tls
        return tls._app_closing or tls._state == _CLOSED

    def close(self) -> None:
        """Send close_notify after any buffered data, then close the TCP connection."""
        self._tls._app_close()

    def abort(self) -> None:
        """Close the TCP connection now, dropping buffered data and skipping close_notify."""
        self._tls._abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and pass the records to the TCP transport (or buffer it while that is paused)."""
        if type(data) is not bytes and not isinstance(data, (bytearray, memoryview)):
            raise TypeError(f"data: expecting a bytes-like instance, got {type(data).__name__}")
        if data:
            self._tls._app_write(data)

    def writelines(self, list_of_data: Any) -> None:
        """Encrypt each buffer, then hand all resulting records to the TCP transport in one write()."""
        self._tls._app_writelines(list_of_data)

    def write_eof(self) -> None:
        raise NotImplementedError("TLS does not support half-closes (write_eof); use close()")

    def can_write_eof(self) -> bool:
        return False

    def is_reading(self) -> bool:
        tls = self._tls
        return not tls._app_read_paused and tls._state != _CLOSED

    def pause_reading(self) -> None:
        self._tls._pause_reading()

    def resume_reading(self) -> None:
        self._tls._resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Limits apply to our plaintext backlog plus the TCP transport's buffer (set on it too)."""
        self._tls._set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        tls = self._tls
        return tls._low, tls._high

    def get_write_buffer_size(self) -> int:
        """Plaintext waiting here plus encrypted bytes waiting in the TCP transport."""
        tls = self._tls
        t = tls._transport
        return tls._backlog_size + (t.get_write_buffer_size() if t is not None else 0)

    def get_read_buffer_size(self) -> int:
        """Encrypted bytes received but not yet decrypted (non-zero only while reading is paused)."""
        tls = self._tls
        return tls._incoming.pending if tls._incoming is not None else 0

    def __repr__(self) -> str:
        return f"<TLSTransport {self._tls!r}>"


class TLSProtocol(asyncio.BufferedProtocol):
    """TLS endpoint: a buffered protocol towards the TCP transport, a transport towards the application.

    Constructor arguments follow ``asyncio.sslproto.SSLProtocol``: ``waiter`` (optional future) gets the
    result when the handshake completes or the exception that ended it; ``call_connection_made=False`` is
    for ``start_tls``, where the application protocol is already connected.  :attr:`app_transport` is the
    transport to return to the caller.  ``session`` (client only) resumes a session taken from a previous
    connection's ``get_extra_info("ssl_object").session``.
    """

    __slots__ = (
        "__weakref__",
        "_app",
        "_app_buffered",
        "_app_closing",
        "_app_read_paused",
        "_app_state",
        "_app_transport",
        "_app_view",
        "_app_write_paused",
        "_backlog",
        "_backlog_size",
        "_ctx",
        "_eof_pending",
        "_error",
        "_flush_scheduled",
        "_framed",
        "_hdr",
        "_high",
        "_hs_timeout",
        "_incoming",
        "_lend_in",
        "_lent",
        "_loop",
        "_low",
        "_outgoing",
        "_partial",
        "_rec_left",
        "_sd_timeout",
        "_selector",
        "_server_hostname",
        "_server_side",
        "_shared",
        "_ssl",
        "_sslobj",
        "_state",
        "_tcp_paused",
        "_timer",
        "_transport",
        "_waiter",
        "_writes_after_close",
    )  # fmt: skip

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app_protocol: asyncio.BaseProtocol,
        sslcontext: ssl.SSLContext | None,
        waiter: asyncio.Future[None] | None = None,
        server_side: bool = False,
        server_hostname: str | None = None,
        call_connection_made: bool = True,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        *,
        session: ssl.SSLSession | None = None,
    ) -> None:
        if ssl_handshake_timeout is None:
            ssl_handshake_timeout = HANDSHAKE_TIMEOUT
        elif ssl_handshake_timeout <= 0:
            raise ValueError(f"ssl_handshake_timeout should be a positive number, got {ssl_handshake_timeout}")
        if ssl_shutdown_timeout is None:
            ssl_shutdown_timeout = SHUTDOWN_TIMEOUT
        elif ssl_shutdown_timeout <= 0:
            raise ValueError(f"ssl_shutdown_timeout should be a positive number, got {ssl_shutdown_timeout}")
        if sslcontext is None:
            if server_side:
                raise ValueError("server side TLS needs a valid SSLContext")
            sslcontext = ssl.create_default_context()
            if not server_hostname:
                sslcontext.check_hostname = False
        self._loop = loop
        self._ctx = sslcontext
        self._waiter = waiter
        self._server_side = server_side
        self._server_hostname = server_hostname if server_hostname and not server_side else None
        self._hs_timeout = ssl_handshake_timeout
        self._sd_timeout = ssl_shutdown_timeout
        # The compiled engine where it can take this connection (uringws/tls/engine.py says why not), else the
        # stdlib's SSLObject over two MemoryBIOs; both offer the same calls, so nothing below tells them apart.
        compiled = new_engine(sslcontext, server_side, session)
        self._incoming: Any
        self._sslobj: Any
        if compiled is not None:
            self._incoming = compiled.incoming
            self._lend_in: Any = self._incoming.lend
            self._outgoing: Any = compiled.outgoing
            self._sslobj = CompiledSSLObject(compiled)
            self._ssl: Any = compiled
        else:
            self._incoming = ssl.MemoryBIO()
            self._lend_in = None
            self._outgoing = ssl.MemoryBIO()
            self._sslobj = sslcontext.wrap_bio(
                self._incoming,
                self._outgoing,
                server_side=server_side,
                server_hostname=self._server_hostname,
                session=session,
            )
            # What reads and writes go through: the SSLObject's inner object where that saves a Python frame per
            # record (see compat.sslobject_fast).
            self._ssl = _sslobject_fast(self._sslobj)
        self._transport: Any = None  # any asyncio stream transport (write, close, abort, pause_reading...)
        self._app_transport: TLSTransport | None = TLSTransport(self)
        self._state = _UNWRAPPED
        self._app_state = _APP_INIT if call_connection_made else _APP_MADE
        self._app_closing = False
        self._error: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._backlog: collections.deque[bytes | memoryview] | None = None  # created only when needed
        self._backlog_size = 0
        self._tcp_paused = False
        self._app_write_paused = False
        self._app_read_paused = False
        self._high, self._low = _flow_limits(None, None)
        self._shared = _shared_buffers()
        self._lent: memoryview | None = None
        self._rec_left = 0  # bytes of the current TLS record body not yet received
        self._hdr = b""  # partial record header carried over between reads
        # Bytes of the trailing incomplete record received so far: while the incoming BIO holds no more than this,
        # it holds no complete record and SSL_read could only raise SSLWantReadError (costly: ~2 us each).
        self._partial = 0
        self._framed = True  # every header seen was one OpenSSL accepts (type 20-24, length in range); else never skip
        self._eof_pending = False
        self._writes_after_close = 0
        self._app: Any = None
        self._app_buffered = False
        self._app_view: Any = None
        self._set_app_protocol(app_protocol)
        # The loop's selector if it runs `before_wait` hooks right before waiting in the kernel (uringws's ring
        # loop): small writes are then coalesced until that moment. Any other loop: every write is encrypted and
        # handed down at once, never left waiting for some unrelated event.
        selector = getattr(loop, "_selector", None)
        self._selector: Any = selector if isinstance(getattr(selector, "before_wait", None), list) else None
        self._flush_scheduled = False  # our _flush_pending is in the selector's before_wait list

    # -- public helpers ---------------------------------------------------------------------------

    @property
    def app_transport(self) -> TLSTransport:
        """The transport handed to the application protocol."""
        t = self._app_transport
        if t is None:  # dropped at connection_lost(); a new one forwards the same calls to us
            t = TLSTransport(self)
        return t

    def __repr__(self) -> str:
        side = "server" if self._server_side else "client"
        return f"<TLSProtocol {side} state={self._state} transport={self._transport!r}>"

    def _set_app_protocol(self, app_protocol: asyncio.BaseProtocol) -> None:
        self._app = app_protocol
        self._app_buffered = isinstance(app_protocol, asyncio.BufferedProtocol)
        # A Protocol with received_view(view) takes decrypted bytes as a view of the thread's shared plaintext
        # buffer, valid only during the call (released after it): no bytes object made per delivery. It must
        # not keep the view, nor read it after making another TLS connection of this thread decrypt (which
        # reuses that buffer; a TLSProtocol as the app copies the view into its BIO first, so it may).
        self._app_view = None if self._app_buffered else getattr(app_protocol, "received_view", None)

    def _peer(self) -> Any:
        t = self._transport
        return t.get_extra_info("peername") if t is not None else None

    def _get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self._sslobj
        if name == "ssl_object":
            return sslobj
        if name == "sslcontext":
            return self._ctx
        if name in ("peercert", "cipher", "compression"):
            # Computed on demand rather than stored: nothing per connection unless someone asks.
            if sslobj is None or self._state < _WRAPPED:
                return default
            try:
                if name == "peercert":
                    return sslobj.getpeercert()
                return sslobj.cipher() if name == "cipher" else sslobj.compression()
            except ValueError:  # handshake not done (e.g. it failed)
                return default
        t = self._transport
        return t.get_extra_info(name, default) if t is not None else default

    # -- towards the TCP transport: connection events --------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the handshake (the client sends its ClientHello now)."""
        self._transport = transport
        if self._state == _CLOSED:  # aborted before the TCP transport connected us (e.g. a server closing)
            transport.abort()  # type: ignore[attr-defined]
            return
        self._state = _HANDSHAKE
        self._timer = self._loop.call_later(self._hs_timeout, self._handshake_timed_out)
        self._do_handshake()

    def connection_lost(self, exc: Exception | None) -> None:
        """Report the end to the waiter and the application, then drop per-connection state."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._shared.owner is self:
            self._shared.owner = None
        self._lent = None
        err = self._error if self._error is not None else exc
        self._state = _CLOSED
        self._app_closing = True
        self._backlog = None
        self._backlog_size = 0
        if self._waiter is not None:
            # Still waiting, so the handshake never completed (success wakes it at once), whatever the state
            # says: e.g. abort() during the handshake leaves no error, and must not read as success.
            self._wake_waiter(err if err is not None else ConnectionResetError("Connection lost during TLS handshake"))
        app = self._app
        if self._app_state in (_APP_MADE, _APP_EOF):
            self._app_state = _APP_LOST
            app.connection_lost(err)
        self._transport = None
        self._incoming = None
        # The app and its transport point back at us (app.transport._tls is self): without these two links the
        # connection's objects are freed by refcounting as soon as the app lets go, not by the cycle collector.
        # As asyncio's transports do, get_protocol() is None from now on; calls on the app's transport keep working.
        self._app = None
        self._app_view = None
        self._app_transport = None

    def pause_writing(self) -> None:
        """The TCP transport's buffer is above its high-water mark: stop encrypting, tell the app."""
        self._tcp_paused = True
        self._update_app_writing()

    def resume_writing(self) -> None:
        """The TCP transport drained: encrypt the backlog, then let the app write again."""
        self._tcp_paused = False
        if self._backlog and self._state == _WRAPPED:
            self._drain_backlog()
        self._update_app_writing()

    def _on_eof(self) -> bool:
        state = self._state
        if state == _HANDSHAKE:
            err = ConnectionResetError("peer closed the connection during the TLS handshake")
            logger.info("TLS handshake with %s failed: %s", self._peer(), err)
            self._end_handshake(err)
        elif state == _WRAPPED:
            if self._app_read_paused:
                self._eof_pending = True
                return True
            self._handle_eof()
        elif state == _SHUTDOWN:
            self._state = _CLOSED
        return False

    # -- towards the TCP transport: incoming bytes ------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        """Lend the thread's shared receive buffer (or a small private one if it is already lent)."""
        shared = self._shared
        owner = shared.owner
        # A lender that never called buffer_updated() (EAGAIN, EOF, error) and is gone cannot be using it.
        if owner is None or owner is self or owner._state == _CLOSED:
            shared.owner = self
            self._lent = view = shared.recv
        else:
            self._lent = view = memoryview(bytearray(PRIVATE_RECV_SIZE))
        return view

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` arrived in the lent buffer: feed them to OpenSSL and process."""
        view = self._lent
        self._lent = None
        if self._shared.owner is self:
            self._shared.owner = None
        if view is not None:
            self.data_received(view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes from the TCP transport: fed to OpenSSL (the stdlib engine copies them into its incoming BIO, the
        compiled one reads them in place), then processed.

        Also the ring transport's ``received_view`` hook: ``data`` may be a view of the loop's receive buffers
        that is valid only during this call, which saves copying it into a ``get_buffer()`` buffer first.
        """
        if self._state == _CLOSED:
            return
        # Record tracking, common case inline: the chunk ends inside the current record, or it is exactly
        # the end of the current record plus one whole record (a small message).
        nbytes = len(data)
        left = self._rec_left
        if left >= nbytes:
            self._rec_left = left - nbytes
            self._partial = 0 if left == nbytes else self._partial + nbytes
        elif (
            self._hdr
            or left + 5 > nbytes
            or data[left] != 23  # application data; other types take the general path, which checks them
            or left + 5 + ((data[left + 3] << 8) | data[left + 4]) != nbytes
        ):
            self._track(data)
        else:
            self._rec_left = 0
            self._partial = 0
        incoming = self._incoming
        if self._lend_in is None:
            incoming.write(data)
            self._process_received()
            return
        # Compiled engine: OpenSSL reads data in place; what it has not read when we return is copied (data may be
        # a view of the loop's receive buffers, valid only during this call).
        self._lend_in(data)
        try:
            if self._state == _WRAPPED:  # _process_received(), its common case inline (once per message)
                if not self._app_read_paused:
                    self._read()
            else:
                self._process_received()
        finally:
            incoming.keep()

    def _process_received(self) -> None:
        state = self._state
        if state == _WRAPPED:
            if not self._app_read_paused:
                self._read()
        elif state == _HANDSHAKE:
            self._do_handshake()
        elif state == _SHUTDOWN:
            self._read_shutdown()

    @property
    def received_view(self) -> Any:
        """The ring transport's hook for received bytes lent as a view (see data_received()).

        On the compiled engine, a C object that does data_received()'s common case (application data for an app
        that takes lent views) without its Python frames, and calls data_received() for everything else; it is
        made per access, so the transport that keeps it is what keeps it alive. Elsewhere data_received() itself.
        """
        if self._lend_in is not None and _Receive is not None:
            return _Receive(self, self._ssl, _WRAPPED, _MAX_RECORD_BODY, self._shared.plain)
        return self.data_received

    def eof_received(self) -> bool:
        """TCP FIN from the peer.  Returns True only to keep the transport open while app reading is paused."""
        if self._shared.owner is self:  # the transport lent our buffer but got EOF instead of data
            self._shared.owner = None
        return self._on_eof()

    def _track_records(self, data: bytes | memoryview) -> None:
        """Follow TLS record boundaries (5-byte headers) so an EOF can tell truncation from a clean end, and
        _read() can tell whether a complete record is waiting."""
        n = len(data)
        left = self._rec_left
        if left >= n:  # the whole chunk is inside one record body
            self._rec_left = left - n
            self._partial = 0 if left == n else self._partial + n
            return
        i = left
        hdr = self._hdr
        length = 0
        while i < n:
            if hdr or n - i < 5:
                take = min(5 - len(hdr), n - i)
                hdr += bytes(data[i : i + take])
                i += take
                if len(hdr) < 5:
                    break
                ctype = hdr[0]
                length = (hdr[3] << 8) | hdr[4]
                hdr = b""
            else:
                ctype = data[i]
                length = (data[i + 3] << 8) | data[i + 4]
                i += 5
            if not 20 <= ctype <= 24 or length > _MAX_RECORD_BODY:
                # Not a TLS record header (e.g. an SSLv2-format ClientHello), or a length OpenSSL rejects as soon
                # as it sees the header: never skip a read on our framing, so the error comes without waiting.
                self._framed = False
            i += length
        if i > n:
            self._rec_left = i - n
            self._partial = 5 + length - (i - n)
        else:
            self._rec_left = 0
            self._partial = len(hdr)
        self._hdr = hdr

    def _track_records_c(self, data: bytes | memoryview) -> None:
        """_track_records in C (the compiled engine's ``scan_records``): its per-record loop, once per received
        chunk. Used instead of it when built (``_track``); the pure method stays the reference it is tested on."""
        self._rec_left, self._partial, self._hdr, framed = _engine_scan_records(
            data, self._rec_left, self._partial, self._hdr, _MAX_RECORD_BODY
        )
        if not framed:
            self._framed = False

    _track = _track_records_c if _engine_scan_records is not None else _track_records

    def _flush(self) -> None:
        """Hand everything OpenSSL produced to the TCP transport, in order."""
        outgoing = self._outgoing
        if outgoing.pending:
            data = outgoing.read()
            t = self._transport
            if t is not None:
                t.write(data)

    # -- handshake ---------------------------------------------------------------------------------

    def _do_handshake(self) -> None:
        sslobj = self._sslobj
        assert sslobj is not None
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # OpenSSL queued an alert that tells the peer why
            logger.info("TLS handshake with %s failed: %s", self._peer(), exc)
            self._end_handshake(exc)
            return
        self._flush()  # last flight; TLS 1.3 servers also send session tickets here
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._state = _WRAPPED
        if self._app_state == _APP_INIT:
            self._app_state = _APP_MADE
            try:
                self._app.connection_made(self.app_transport)
            except Exception as exc:  # noqa: BLE001 - app errors go to the loop handler
                self._fatal(exc, "Error calling connection_made()")
                self._wake_waiter(exc)
                return
        self._wake_waiter(None)
        if self._state != _WRAPPED:
            return
        self._update_app_writing()  # the TCP transport may have paused us during the handshake
        if self._backlog and not self._tcp_paused:
            self._drain_backlog()
        if self._app_closing and not self._backlog:
            self._send_close_notify()
        elif not self._app_read_paused:
            self._read()  # data may have arrived together with the peer's Finished

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKE:
            # asyncio's type and words (3.11-3.13): code that matches on them keeps working.
            err = ConnectionAbortedError(
                f"SSL handshake is taking longer than {self._hs_timeout} seconds: aborting the connection"
            )
            logger.info("TLS handshake with %s failed: %s", self._peer(), err)
            self._error = err
            self._state = _CLOSED
            self._wake_waiter(err)
            if self._transport is not None:
                self._transport.abort()

    def _end_handshake(self, err: BaseException) -> None:
        """The handshake failed: report to the waiter and close (flushing any alert first)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Kept (and handed to the waiter) without its traceback, whose frames would point back at us.
        self._error = err = err.with_traceback(None)
        self._state = _CLOSED
        self._wake_waiter(err)
        self._close_transport()

    def _wake_waiter(self, exc: BaseException | None) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        self._waiter = None
        if not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    # -- reading application data ----------------------------------------------------------------

    def _read(self) -> None:
        """Decrypt what is buffered and deliver it; handle close_notify, alerts and record errors."""
        sslobj = self._ssl
        incoming = self._incoming
        assert incoming is not None
        # No complete record in the BIO and nothing decrypted inside OpenSSL: a read could only raise WantRead.
        partial = self._partial if self._framed else 0
        compiled = self._lend_in is not None
        if compiled and sslobj.more:
            # The compiled engine still has something to say (a full buffer's rest, a close_notify or an error met
            # after data it returned): never skip that read, it would leave the connection waiting forever.
            partial = -1
        if incoming.pending <= partial and not sslobj.pending():
            return
        app = self._app
        got_close_notify = False
        n: Any  # SSLObject.read(len, buffer) returns a count (typeshed says bytes)
        try:
            if self._app_buffered:
                while True:
                    buf = app.get_buffer(-1)
                    size = len(buf)
                    if not size:
                        raise RuntimeError("get_buffer() returned an empty buffer")
                    try:
                        n = sslobj.read(size, buf)
                    except ssl.SSLWantReadError:
                        break
                    if not n:
                        got_close_notify = True
                        break
                    app.buffer_updated(n)
                    if self._state != _WRAPPED or self._app_read_paused:
                        break
                    if incoming.pending <= partial and not sslobj.pending():
                        break
            elif compiled:
                # The compiled engine decrypts everything available in one call (Engine.read_all).
                view = self._shared.plain
                lend = self._app_view
                read_all = sslobj.read_all
                while True:
                    n = read_all(view, partial)
                    if n:
                        if lend is None:
                            app.data_received(view[:n].tobytes())
                        else:
                            part = view[:n]
                            try:
                                lend(part)
                            finally:
                                part.release()
                    if not sslobj.more or self._state != _WRAPPED or self._app_read_paused:
                        break
            else:
                view = self._shared.plain
                size = len(view)
                off = 0
                lend = self._app_view
                try:
                    while True:
                        n = sslobj.read(size - off, view[off:] if off else view)
                        if not n:
                            got_close_notify = True
                            break
                        off += n
                        if off == size:
                            off = 0
                            if lend is None:
                                app.data_received(view.tobytes())
                            else:
                                self._lend(lend, view, size)
                            if self._state != _WRAPPED or self._app_read_paused:
                                break
                        # Skip the read that could only raise SSLWantReadError: exceptions cost.
                        if incoming.pending <= partial and not sslobj.pending():
                            break
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    if off:  # deliver what decrypted cleanly before the bad record
                        if lend is None:
                            app.data_received(view[:off].tobytes())
                        else:
                            self._lend(lend, view, off)
                    raise
                if off:
                    if lend is None:
                        app.data_received(view[:off].tobytes())
                    else:
                        # self._lend(lend, view, off), inlined: once per received chunk.
                        part = view[:off]
                        try:
                            lend(part)
                        finally:
                            part.release()
        except ssl.SSLZeroReturnError:
            got_close_notify = True
        except ssl.SSLError as exc:
            self._tls_error(exc)
            return
        except Exception as exc:  # noqa: BLE001 - app errors go to the loop handler
            self._fatal(exc, "Fatal error in application protocol receiving TLS data")
            return
        if self._outgoing.pending:  # e.g. a KeyUpdate answer
            self._flush()
        if got_close_notify and self._state == _WRAPPED:
            self._on_close_notify()
        elif self._backlog and not self._tcp_paused and not self._flush_scheduled and self._state == _WRAPPED:
            self._drain_backlog()  # a write that waited for a renegotiation step (coalesced ones wait for the hook)

    @staticmethod
    def _lend(received_view: Any, view: memoryview, n: int) -> None:
        """Hand ``view[:n]`` to the app's received_view(); the slice is released after the call, so a view the app
        kept by mistake fails loudly instead of showing bytes of a later record."""
        part = view[:n]
        try:
            received_view(part)
        finally:
            part.release()

    def _tls_error(self, exc: ssl.SSLError) -> None:
        """A record error or alert from the peer: log, send our alert if any, close."""
        self._flush()
        logger.warning("TLS error on connection with %s: %s", self._peer(), exc)
        # Kept until connection_lost() and handed to the app: without its traceback, which would pin every frame
        # of the receive path, with their locals (e.g. a view of the loop's shared receive buffers).
        self._error = exc.with_traceback(None)
        self._state = _CLOSED
        self._close_transport()

    def _on_close_notify(self) -> None:
        """The peer sent close_notify: tell the app (EOF), answer with ours, close."""
        self._call_eof_received()
        if self._state == _CLOSED:
            return
        sslobj = self._sslobj
        assert sslobj is not None
        try:
            sslobj.unwrap()  # sends our close_notify; complete since the peer's was received
        except ssl.SSLError as exc:
            logger.debug("TLS shutdown with %s: %s", self._peer(), exc)
        self._flush()
        self._state = _CLOSED
        self._close_transport()

    def _call_eof_received(self) -> None:
        if self._app_state != _APP_MADE:
            return
        self._app_state = _APP_EOF
        try:
            keep_open = self._app.eof_received()
        except Exception as exc:  # noqa: BLE001 - app errors go to the loop handler
            self._fatal(exc, "Error calling eof_received()")
            return
        if keep_open:
            logger.warning("returning true from eof_received() has no effect when using TLS")

    def _handle_eof(self) -> None:
        """TCP EOF while wrapped: deliver what is complete, then judge how the stream ended."""
        self._read()
        if self._state != _WRAPPED:
            return
        self._state = _CLOSED
        if self._rec_left or self._hdr:
            err = TLSTruncatedError(
                "peer closed the connection in the middle of a TLS record "
                f"({self._rec_left or 5 - len(self._hdr)} bytes missing): data was lost"
            )
            logger.warning("TLS error on connection with %s: %s", self._peer(), err)
            self._error = err
        else:
            # Like asyncio: many peers close TCP without close_notify; at a record boundary it is an EOF.
            logger.debug("%s closed the connection without TLS close_notify", self._peer())
            self._call_eof_received()

    def _read_shutdown(self) -> None:
        """After our close_notify: discard data until the peer's close_notify, then close."""
        sslobj = self._sslobj
        assert sslobj is not None
        view = self._shared.plain
        try:
            while sslobj.read(len(view), view):
                pass
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLZeroReturnError:
            pass
        except ssl.SSLError as exc:
            logger.debug("TLS error during shutdown with %s: %s", self._peer(), exc)
        self._flush()
        self._state = _CLOSED
        if self._transport is not None:
            self._transport.close()

    # -- flow control for reading ------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if self._app_read_paused or self._state == _CLOSED:
            return
        self._app_read_paused = True
        # Pausing TCP too bounds what piles up in the incoming BIO to one recv.
        if self._transport is not None:
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self._app_read_paused:
            return
        self._app_read_paused = False
        if self._state == _CLOSED:
            return
        if self._transport is not None:
            self._transport.resume_reading()
        self._loop.call_soon(self._resume_read)

    def _resume_read(self) -> None:
        if self._state != _WRAPPED or self._app_read_paused:
            return
        self._read()
        if self._eof_pending and self._state == _WRAPPED:
            self._eof_pending = False
            self._handle_eof()
            if self._transport is not None:
                self._transport.close()

    # -- writing -----------------------------------------------------------------------------------

    def _app_write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _WRAPPED or self._app_closing:
            if self._state == _HANDSHAKE and not self._app_closing:
                self._queue(_immutable(data))
                return
            self._writes_after_close += 1
            if self._writes_after_close >= _WARN_WRITES_AFTER_CLOSE:
                logger.warning("TLS connection is closed")
            return
        backlog = self._backlog
        if backlog:  # keep order behind what is already waiting
            # self._queue(_immutable(data)), inlined: this runs once per small message under load.
            if type(data) is not bytes:
                data = _immutable(data)  # counted in bytes below, like _queue()
            backlog.append(data)
            size = self._backlog_size = self._backlog_size + len(data)
            if self._flush_scheduled and not self._tcp_paused and (size >= COALESCE_LIMIT or size > self._high):
                self._drain_backlog()  # enough coalesced: encrypt now (still in order, still few records)
                size = self._backlog_size
            if self._app_write_paused or self._tcp_paused or size > self._high:
                # (otherwise _update_app_writing() has nothing to do: not paused, at or below the high-water mark;
                # skipped once per large message)
                self._update_app_writing()
            return
        selector = self._selector
        if selector is not None and not self._tcp_paused:
            size = data.nbytes if type(data) is memoryview else len(data)
            if size < COALESCE_LIMIT and size < self._high:
                # Coalesce: encrypted with the other small writes of this loop iteration, right before the loop
                # waits (one record, one BIO read, one transport write for all of them). Nothing is queued
                # (checked above), so this starts the backlog.
                if type(data) is not bytes:
                    data = _immutable(data)
                if backlog is None:
                    self._backlog = collections.deque((data,))
                else:
                    backlog.append(data)
                self._backlog_size = size
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    selector.before_wait.append(self._flush_pending)
                return
        if len(data) <= WRITE_CHUNK and not self._tcp_paused:
            # Fast path: one SSL_write, one BIO read, one transport write; no copy of our own.
            try:
                self._ssl.write(data)
            except ssl.SSLWantReadError:  # TLS 1.2 renegotiation in progress
                self._flush()
                self._queue(_immutable(data))
                return
            except ssl.SSLError as exc:
                self._tls_error(exc)
                return
            self._transport.write(self._outgoing.read())
            return
        self._encrypt(data)  # copies only what it has to queue
        self._update_app_writing()

    @property
    def write_if_open(self) -> Any:
        """``_write_if_open``, as the WebSocket layer looks it up once per connection: on the compiled engine a C
        object that does its common case (and, as the before-wait hook it registers, ``_flush_pending``'s), and
        calls the Python methods for everything else; elsewhere the method itself."""
        if self._lend_in is not None and _Send is not None:
            return _Send(self, self._ssl, _WRAPPED, COALESCE_LIMIT, RECORD_PLAINTEXT, WRITE_CHUNK)
        return self._write_if_open

    def _write_if_open(self, data: bytes, payload: bytes | None = None) -> None:
        """``if not app_transport.is_closing(): app_transport.write(data)`` for a non-empty bytes object, in one
        call instead of three: the WebSocket layer sends each message through here. The common case (open, small,
        coalesced until the loop waits) is `_app_write`'s own, inline; anything else goes through it.

        With ``payload`` (non-empty bytes), ``data`` is a frame header and ``payload`` its large payload: see
        `_write_pair_if_open`."""
        if payload is not None:
            self._write_pair_if_open(data, payload)
            return
        if self._state != _WRAPPED or self._app_closing or self._tcp_paused or self._selector is None:
            if not self._app_closing and self._state != _CLOSED:
                self._app_write(data)
            return
        backlog = self._backlog
        if backlog:
            size = self._backlog_size + len(data)
            if not self._flush_scheduled or size >= COALESCE_LIMIT or size > self._high or self._app_write_paused:
                self._app_write(data)
                return
            backlog.append(data)
            self._backlog_size = size
            return
        size = len(data)
        if size >= COALESCE_LIMIT or size >= self._high:
            self._app_write(data)
            return
        if backlog is None:
            self._backlog = collections.deque((data,))
        else:
            backlog.append(data)
        self._backlog_size = size
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._selector.before_wait.append(self._flush_pending)

    def _write_pair_if_open(self, header: bytes, payload: bytes) -> None:
        """``_write_if_open(header)`` then ``_write_if_open(payload)``, for a frame header and a payload too large
        to coalesce with it, without the backlog between them.

        Those two calls would queue the header, then encrypt it as a record of its own and the payload after it
        (`_app_write`, `_drain_backlog`): up to one ``WRITE_CHUNK`` in one transport write with the header, a
        larger payload in ``WRITE_CHUNK`` pieces while TCP takes them (`_encrypt`). This does the same here when
        nothing is queued and nothing is paused; anything else takes the two calls. The WebSocket layer's large
        binary messages come this way, once per message.
        """
        hsize = len(header)
        size = hsize + len(payload)
        if (
            self._state != _WRAPPED
            or self._app_closing
            or self._tcp_paused
            or self._selector is None
            or self._backlog
            or hsize >= COALESCE_LIMIT
            or hsize >= self._high
            or size <= RECORD_PLAINTEXT
        ):
            self._write_if_open(header)
            self._write_if_open(payload)
            return
        sslobj = self._ssl
        try:
            sslobj.write(header)
        except ssl.SSLWantReadError:  # TLS 1.2 renegotiation step: both wait for the peer, in order
            self._queue(header)
            self._queue(payload)
            self._flush()
            self._update_app_writing()
            return
        except ssl.SSLError as exc:
            self._tls_error(exc)
            return
        if size - hsize > WRITE_CHUNK:
            finished = not self._encrypt(payload)  # hands down the header's record with the first piece
        else:
            try:
                sslobj.write(payload)
            except ssl.SSLWantReadError:
                self._queue(payload)
                self._flush()
                self._update_app_writing()
                return
            except ssl.SSLError as exc:
                self._tls_error(exc)
                return
            self._transport.write(self._outgoing.read())  # may call pause_writing() right away
            finished = True
        # As _drain_backlog() and _app_write() end: close_notify if the app closed meanwhile (from its
        # pause_writing()), then the app's flow control.
        if finished and self._app_closing and self._state == _WRAPPED and not self._backlog:
            self._send_close_notify()
        if self._app_write_paused or self._tcp_paused or self._backlog_size > self._high:
            self._update_app_writing()

    def _app_writelines(self, list_of_data: Any) -> None:
        if (
            self._selector is not None
            or self._state != _WRAPPED
            or self._app_closing
            or self._backlog
            or self._tcp_paused
        ):
            for data in list_of_data:
                if data:
                    self._app_write(data)
            return
        sslobj = self._sslobj
        assert sslobj is not None
        list_of_data = list(list_of_data)
        for i, data in enumerate(list_of_data):
            if len(data) > WRITE_CHUNK:
                # Rare: hand over what is encrypted so far, then take the chunked path for the rest.
                self._flush()
                for rest in list_of_data[i:]:
                    if rest:
                        self._app_write(rest)
                return
            if data:
                try:
                    sslobj.write(data)
                except ssl.SSLWantReadError:
                    self._flush()
                    for rest in list_of_data[i:]:
                        if rest:
                            self._queue(_immutable(rest))
                    return
                except ssl.SSLError as exc:
                    self._tls_error(exc)
                    return
        self._flush()  # one transport write for all the records

    def _queue(self, data: bytes | memoryview) -> None:
        if self._backlog is None:
            self._backlog = collections.deque()
        self._backlog.append(data)
        self._backlog_size += len(data)

    def _encrypt(self, data: bytes | bytearray | memoryview) -> bool:
        """Encrypt in WRITE_CHUNK pieces while the TCP transport accepts; queue the rest (order kept).

        Callers pass data that is not behind anything in the backlog, so a remainder goes to its front.
        Returns True if OpenSSL must hear from the peer first (renegotiation): retrying now cannot progress.
        """
        sslobj = self._ssl
        mv = memoryview(data)
        n = mv.nbytes
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        off = 0
        blocked = False
        try:
            while off < n:
                if self._tcp_paused:
                    break
                end = off + WRITE_CHUNK
                sslobj.write(mv[off:end])
                off = min(end, n)
                self._transport.write(self._outgoing.read())  # may call pause_writing() right away
        except ssl.SSLWantReadError:  # renegotiation step: wait for the peer, keep the rest
            self._flush()
            blocked = True
        except ssl.SSLError as exc:
            self._tls_error(exc)
            return False
        if off < n:
            rest = _immutable(mv[off:])  # the app may reuse a mutable buffer after write() returns
            if self._backlog is None:
                self._backlog = collections.deque()
            self._backlog.appendleft(rest)
            self._backlog_size += len(rest)
        return blocked

    def _drain_backlog(self) -> None:
        """Encrypt queued plaintext in order while the TCP transport takes it.

        Runs of small buffers are joined and encrypted with one SSL_write (one TLS record of at most
        RECORD_PLAINTEXT bytes); the records of the whole run leave in one transport write (more only every
        WRITE_CHUNK bytes, or where the transport pauses us).
        """
        backlog = self._backlog
        sslobj = self._ssl
        outgoing = self._outgoing
        while backlog and not self._tcp_paused and self._state == _WRAPPED:
            data = backlog.popleft()
            size = len(data)
            if size > WRITE_CHUNK:
                self._backlog_size -= size
                # Chunked; hands down what OpenSSL produced before it too.
                if self._encrypt(data) or self._backlog is not backlog:
                    return  # renegotiation step (the rest waits in front), or the connection ended meanwhile
                continue
            if backlog and size + len(backlog[0]) <= RECORD_PLAINTEXT:
                parts = [data]
                while backlog and size + len(backlog[0]) <= RECORD_PLAINTEXT:
                    part = backlog.popleft()
                    parts.append(part)
                    size += len(part)
                data = b"".join(parts)
            self._backlog_size -= size
            try:
                sslobj.write(data)
            except ssl.SSLWantReadError:  # TLS 1.2 renegotiation step: wait for the peer, keep the data first
                backlog.appendleft(data)
                self._backlog_size += size
                self._flush()
                return
            except ssl.SSLError as exc:
                self._tls_error(exc)
                return
            if outgoing.pending >= WRITE_CHUNK:
                self._transport.write(outgoing.read())  # may call pause_writing() right away
                if self._backlog is not backlog:
                    return
        if self._state != _WRAPPED:
            return
        if outgoing.pending:  # self._flush(), inline: this runs once per message
            t = self._transport
            if t is not None:
                t.write(outgoing.read())
        if not backlog and self._app_closing and self._backlog is backlog:
            self._send_close_notify()

    def _flush_pending(self) -> None:
        """before_wait hook: encrypt the plaintext coalesced during this loop iteration and hand it down."""
        self._flush_scheduled = False
        backlog = self._backlog
        if backlog and not self._tcp_paused and self._state == _WRAPPED:
            if self._backlog_size <= RECORD_PLAINTEXT and not self._app_closing:
                # _drain_backlog(), inline for its common case (once per loop iteration per connection): all of
                # the coalesced plaintext is one record, one SSL_write, one transport write.
                data = backlog[0] if len(backlog) == 1 else b"".join(backlog)
                try:
                    self._ssl.write(data)
                except ssl.SSLWantReadError:  # TLS 1.2 renegotiation step: the backlog waits for the peer as it is
                    self._flush()
                except ssl.SSLError as exc:
                    self._backlog = None
                    self._backlog_size = 0
                    self._tls_error(exc)
                else:
                    self._backlog = None
                    self._backlog_size = 0
                    outgoing = self._outgoing
                    if outgoing.pending:
                        t = self._transport
                        if t is not None:
                            t.write(outgoing.read())  # may call pause_writing() right away
            else:
                self._drain_backlog()
            if self._app_write_paused or self._tcp_paused or self._backlog_size > self._high:
                # (otherwise _update_app_writing() has nothing to do: not paused, not above the high-water mark)
                self._update_app_writing()
        if self._backlog is not None and not self._backlog:
            self._backlog = None  # an empty deque is ~760 B per idle connection; the next write makes a new one

    def _update_app_writing(self) -> None:
        """Pause the app above the high-water mark (TCP paused or backlog), resume at or below low."""
        if self._app_state not in (_APP_MADE, _APP_EOF):
            return
        if self._tcp_paused or self._backlog_size > self._high:
            if not self._app_write_paused:
                self._app_write_paused = True
                self._call_app_flow("pause_writing")
        elif self._app_write_paused and self._backlog_size <= self._low:
            self._app_write_paused = False
            self._call_app_flow("resume_writing")

    def _call_app_flow(self, name: str) -> None:
        try:
            getattr(self._app, name)()
        except Exception as exc:  # noqa: BLE001 - app errors go to the loop handler
            self._loop.call_exception_handler(
                {
                    "message": f"protocol.{name}() failed",
                    "exception": exc,
                    "transport": self._app_transport,
                    "protocol": self._app,
                }
            )

    def _set_write_buffer_limits(self, high: int | None, low: int | None) -> None:
        self._high, self._low = _flow_limits(high, low)
        t = self._transport
        if t is not None and hasattr(t, "set_write_buffer_limits"):
            t.set_write_buffer_limits(self._high, self._low)
        self._update_app_writing()

    # -- closing -----------------------------------------------------------------------------------

    def _app_close(self) -> None:
        if self._app_closing or self._state == _CLOSED:
            return
        self._app_closing = True
        if self._state <= _HANDSHAKE:
            # Like asyncio: closing before the handshake finished is an abort.
            self._abort()
            return
        self._timer = self._loop.call_later(self._sd_timeout, self._shutdown_timed_out)
        if not self._backlog:
            self._send_close_notify()
        elif not self._tcp_paused and self._state == _WRAPPED:
            self._drain_backlog()  # coalesced writes first; it sends close_notify once they are out
        # else: _drain_backlog() sends close_notify once the backlog is out (resume_writing, renegotiation)

    def _send_close_notify(self) -> None:
        sslobj = self._sslobj
        assert sslobj is not None
        try:
            sslobj.unwrap()
        except ssl.SSLWantReadError:  # close_notify sent; the peer's has not arrived yet
            pass
        except ssl.SSLError as exc:
            logger.debug("TLS shutdown with %s: %s", self._peer(), exc)
            self._flush()
            self._state = _CLOSED
            self._close_transport()
            return
        else:  # the peer's close_notify was already here
            self._flush()
            self._state = _CLOSED
            self._close_transport()
            return
        self._flush()
        self._state = _SHUTDOWN
        if self._app_read_paused and self._transport is not None:
            self._transport.resume_reading()  # we must read the peer's close_notify
        if self._incoming is not None and self._incoming.pending:
            self._read_shutdown()

    def _shutdown_timed_out(self) -> None:
        self._timer = None
        if self._state in (_WRAPPED, _SHUTDOWN) or (self._state == _CLOSED and self._transport is not None):
            err = TimeoutError("TLS shutdown timed out")
            logger.warning("TLS connection with %s: %s", self._peer(), err)
            if self._error is None:
                self._error = err
            self._state = _CLOSED
            if self._transport is not None:
                self._transport.abort()

    def _close_transport(self) -> None:
        """Close TCP after what is queued (our alert or close_notify); abort if that takes too long."""
        t = self._transport
        if t is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._sd_timeout, self._shutdown_timed_out)
        t.close()

    def _abort(self) -> None:
        self._app_closing = True
        self._state = _CLOSED
        self._backlog = None
        self._backlog_size = 0
        if self._transport is not None:
            self._transport.abort()

    def _fatal(self, exc: BaseException, message: str) -> None:
        """An error in our caller's code: report through the loop's exception handler and abort."""
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self._transport, "protocol": self}
        )
        self._error = exc
        self._abort()


def make_ssl_transport(
    loop: Any,
    rawsock: Any,
    protocol: asyncio.BaseProtocol,
    sslcontext: ssl.SSLContext,
    waiter: asyncio.Future[None] | None = None,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
    extra: dict[str, Any] | None = None,
    server: Any = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
    call_connection_made: bool = True,
) -> TLSTransport:
    """Body for a loop's ``_make_ssl_transport``: wrap ``protocol`` in TLS over ``_make_socket_transport``."""
    tls = TLSProtocol(
        loop,
        protocol,
        sslcontext,
        waiter,
        server_side,
        server_hostname,
        call_connection_made=call_connection_made,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
    )
    loop._make_socket_transport(rawsock, tls, extra=extra, server=server)
    return tls.app_transport


async def start_tls(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.BaseTransport,
    protocol: asyncio.BaseProtocol,
    sslcontext: ssl.SSLContext,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> TLSTransport:
    """Upgrade an existing connection to TLS; same semantics as ``loop.start_tls``."""
    # asyncio's checks and messages: code written against asyncio catches these TypeErrors.
    if not isinstance(sslcontext, ssl.SSLContext):
        raise TypeError(f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}")
    if not getattr(transport, "_start_tls_compatible", False):
        raise TypeError(f"transport {transport!r} is not supported by start_tls()")
    waiter: asyncio.Future[None] = loop.create_future()
    tls = TLSProtocol(
        loop,
        protocol,
        sslcontext,
        waiter,
        server_side,
        server_hostname,
        call_connection_made=False,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
    )
    # Pause so nothing is read between set_protocol() and the handshake start (as asyncio does).
    transport.pause_reading()  # type: ignore[attr-defined]
    transport.set_protocol(tls)
    conmade = loop.call_soon(tls.connection_made, transport)
    resume = loop.call_soon(transport.resume_reading)  # type: ignore[attr-defined]
    try:
        await waiter
    except BaseException:
        transport.close()
        conmade.cancel()
        resume.cancel()
        raise
    return tls.app_transport
