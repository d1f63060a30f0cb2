"""A FastAPI app for tests/e2e/test_asgi.py: HTTP, streaming, WebSocket echo, lifespan, and which loop runs it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

#: The lifespan writes "started" and "stopped" lines here, so the test sees both ends of it.
LIFESPAN_LOG = os.environ.get("ASGI_TEST_LIFESPAN_LOG")


def _log(line: str) -> None:
    if LIFESPAN_LOG:
        with open(LIFESPAN_LOG, "a") as f:
            f.write(line + "\n")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    _log("started " + type(asyncio.get_running_loop()).__name__)
    yield
    _log("stopped")


app = FastAPI(lifespan=lifespan)


@app.get("/loop")
async def loop_info() -> dict[str, str]:
    loop = asyncio.get_running_loop()
    return {"class": f"{type(loop).__module__}.{type(loop).__name__}", "backend": str(getattr(loop, "backend", ""))}


@app.get("/stream")
async def stream(chunks: int = 10, size: int = 1000) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(chunks):
            yield bytes([i % 256]) * size
            await asyncio.sleep(0)

    return StreamingResponse(body(), media_type="application/octet-stream")


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


def uring_worker_class() -> type:
    """gunicorn's worker for this app on uringws's loop: ``gunicorn -k tests.e2e.asgi_app.UringWorker``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # uvicorn.workers points to the uvicorn-worker package
        from uvicorn.workers import UvicornWorker

    class UringWorker(UvicornWorker):
        CONFIG_KWARGS = {"loop": "uringws:new_event_loop", "http": "auto"}  # noqa: RUF012 - as UvicornWorker has it

    return UringWorker


try:
    UringWorker = uring_worker_class()
except ImportError:  # gunicorn is not installed: the gunicorn test skips
    pass
