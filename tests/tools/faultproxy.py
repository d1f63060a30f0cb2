"""A TCP proxy for tests that damages the server-to-client stream in one precise way.

``drop=(offset, count)`` drops ``count`` bytes of the server's output after the first ``offset`` bytes: the
failure of the bug this project exists for (444 bytes lost after a short send of more than 64 KiB).
``flip=offset`` XORs one byte instead (plain-TCP corruption).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FaultProxy:
    def __init__(self, target: tuple[str, int], *, drop: tuple[int, int] | None = None,
                 flip: int | None = None) -> None:
        self.target = target
        self.drop = drop
        self.flip = flip
        self.port = 0
        self.damaged_connections = 0

    def _damage(self, data: bytes, pos: int) -> bytes:
        """``data`` starts at stream offset ``pos``; return what gets through."""
        end = pos + len(data)
        if self.drop is not None:
            start, count = self.drop
            lo, hi = max(start, pos), min(start + count, end)
            if lo < hi:
                data = data[: lo - pos] + data[hi - pos:]
        elif self.flip is not None and pos <= self.flip < end:
            i = self.flip - pos
            data = data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:]
        return data

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, damage: bool) -> None:
        pos = 0
        try:
            while data := await reader.read(65536):
                out = self._damage(data, pos) if damage else data
                if damage and out != data and pos <= (self.drop or (self.flip, 0))[0] < pos + len(data):
                    self.damaged_connections += 1
                pos += len(data)
                writer.write(out)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(self._pipe(creader, swriter, False), self._pipe(sreader, cwriter, True))

    @contextmanager
    def running(self) -> Iterator[FaultProxy]:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        server_box: list[asyncio.AbstractServer] = []

        async def start() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            server_box.append(server)
            started.set()

        def main() -> None:
            loop.run_until_complete(start())
            loop.run_forever()
            # Finish the pipes still open here, on this loop: left to the garbage collector, a pipe's `finally`
            # would close its transport on a loop that is gone ("Event loop is closed", an unraisable warning).
            async def finish(tasks: set[asyncio.Task[object]]) -> None:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            loop.run_until_complete(finish(asyncio.all_tasks(loop)))
            loop.close()

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        assert started.wait(10), "proxy did not start"
        try:
            yield self
        finally:
            def stop() -> None:
                server_box[0].close()
                loop.stop()
            loop.call_soon_threadsafe(stop)
            thread.join(10)
