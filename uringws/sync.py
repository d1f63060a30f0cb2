"""A blocking WebSocket client for scripts and tests: ``with uringws.sync.connect(uri) as ws``.

Each connection runs the asyncio client (:func:`uringws.connect`) on an event loop of its own (uringws's loop:
io_uring where usable, else epoll) in a background thread; the methods here block the calling thread until that
loop has done the work. Any number of threads may use one connection, but only one may wait in ``recv()`` at a time.

::

    from uringws.sync import connect

    with connect("wss://example.com/echo") as ws:
        ws.send("hello")
        print(ws.recv(timeout=5))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any, TypeVar

from .client import connect as _async_connect
from .tls import new_event_loop
from .ws.connection import Connection, Data
from .ws.exceptions import ConnectionClosedOK
from .ws.protocol import State

__all__ = ["ClientConnection", "connect"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread, until stop()."""

    def __init__(self) -> None:
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="uringws-sync", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a uringws.sync connection cannot be used from its own event loop's thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"timed out after {timeout} s") from None

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class ClientConnection:
    """A blocking WebSocket connection; made by :func:`connect`. Close it (or use ``with``) to end its thread."""

    def __init__(self, runner: _LoopThread, connection: Connection) -> None:
        self._runner = runner
        #: The asyncio connection underneath (its attributes: ``request``, ``response``, ``subprotocol``...).
        self.connection = connection

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._runner.loop.is_closed():  # close() ended the thread: what the asyncio connection would raise
            coro.close()
            raise self.connection._closed_exception()
        return self._runner.run(coro, timeout)

    @property
    def state(self) -> State:
        return self.connection.state

    @property
    def subprotocol(self) -> str | None:
        return self.connection.subprotocol

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code

    @property
    def close_reason(self) -> str | None:
        return self.connection.close_reason

    def recv(self, timeout: float | None = None) -> Data:
        """The next message (str or bytes); TimeoutError after ``timeout`` seconds, ConnectionClosed once closed.

        A timeout loses nothing: a message that arrives later is returned by the next ``recv()``.
        """
        return self._run(self.connection.recv(), timeout)

    def __iter__(self) -> Iterator[Data]:
        """Messages until the peer closes normally (an abnormal close raises ConnectionClosedError)."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosedOK:
                return

    def send(self, message: Data | bytearray | memoryview | Iterable[Data], *, text: bool | None = None) -> None:
        """Send a message (str: text, bytes-like: binary, an iterable: fragments; ``text`` forces the frame type
        as in the asyncio ``send()``); blocks while the write buffer is above its high-water mark."""
        self._run(self.connection.send(message, text=text))

    def ping(self, data: str | bytes | None = None) -> threading.Event:
        """Send a ping; the returned event is set when its pong arrives (as in websockets' threading client)."""
        pong = threading.Event()

        async def send_ping() -> None:
            waiter = self.connection._send_ping(data)
            waiter.add_done_callback(lambda f: pong.set() if not f.cancelled() and f.exception() is None else None)

        self._run(send_ping())
        return pong

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake (at most ``close_timeout``), then stop this connection's thread."""
        if self._runner.loop.is_closed():
            return
        try:
            self._runner.run(self.connection.close(code, reason))
        finally:
            self._runner.stop()

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(uri: str, **kwargs: Any) -> ClientConnection:
    """Open a WebSocket connection and return it once the opening handshake is done.

    Takes the keyword arguments of :func:`uringws.connect` (``ssl``, ``subprotocols``, ``compression``,
    ``open_timeout``, ``max_size``, ...). Raises what the handshake raised.
    """
    runner = _LoopThread()
    try:
        connection = runner.run(_async_connect(uri, **kwargs)._connect())
    except BaseException:
        runner.stop()
        raise
    return ClientConnection(runner, connection)
