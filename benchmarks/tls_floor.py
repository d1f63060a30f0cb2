"""The TLS floor: what OpenSSL alone costs for the records a WebSocket server handles, measured in the same run.

Two ``ssl.SSLObject`` s (server and client contexts configured exactly as in the benchmark servers and the load
client) shake hands over memory BIOs, then for each WebSocket frame size:

- **encrypt** = ``server.write(frame)`` + reading the records out of the outgoing BIO,
- **decrypt** = writing those records into the peer's incoming BIO + ``peer.read()`` until the frame is whole.

One *echo leg* = encrypt + decrypt of one frame: exactly the TLS work an echo server does per message (it
decrypts the client's frame and encrypts its reply; the 4 mask bytes of the client frame are ignored). A
broadcast delivery costs one encrypt. ``handshake`` is the server side's ``do_handshake()`` calls of one full
handshake (no session resumption), i.e. the TLS part of one accepted connection.

Each quantity is timed in CPU time of this thread (``time.thread_time``, so time spent descheduled on a busy
machine does not count), over batches for about ``--seconds`` per size; the median batch is reported. The harness
runs this pinned to the servers' CPU. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import sys
import time


def contexts(certfile: str, keyfile: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certfile, keyfile)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


class Pair:
    """A server and a client SSLObject joined by memory BIOs."""

    def __init__(self, sctx: ssl.SSLContext, cctx: ssl.SSLContext) -> None:
        self.s_in, self.s_out, self.c_in, self.c_out = (ssl.MemoryBIO() for _ in range(4))
        self.server = sctx.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.client = cctx.wrap_bio(self.c_in, self.c_out, server_side=False)
        self.server_handshake_s = 0.0

    def handshake(self) -> None:
        """Full handshake; accumulate the time spent in the server's ``do_handshake`` calls only."""
        done_s = done_c = False
        while not (done_s and done_c):
            if not done_c:
                try:
                    self.client.do_handshake()
                    done_c = True
                except ssl.SSLWantReadError:
                    pass
            self.s_in.write(self.c_out.read())
            if not done_s:
                t0 = time.thread_time()
                try:
                    self.server.do_handshake()
                    done_s = True
                except ssl.SSLWantReadError:
                    pass
                self.server_handshake_s += time.thread_time() - t0
            self.c_in.write(self.s_out.read())
        # TLS 1.3 session tickets arrive after the handshake; drain them so they do not skew the first read.
        try:
            self.client.read(1)
        except ssl.SSLWantReadError:
            pass


def leg(pair: Pair, frame: bytes, batch: int) -> tuple[float, float]:
    """Encrypt ``batch`` frames on the server, then decrypt them on the client; return seconds per frame each."""
    server, s_out, client, c_in = pair.server, pair.s_out, pair.client, pair.c_in
    records: list[bytes] = []
    t0 = time.thread_time()
    for _ in range(batch):
        server.write(frame)
        records.append(s_out.read())
    t1 = time.thread_time()
    n = len(frame)
    for rec in records:
        c_in.write(rec)
        got = 0
        while got < n:
            got += len(client.read(n - got))
    t2 = time.thread_time()
    return (t1 - t0) / batch, (t2 - t1) / batch


def measure(certfile: str, keyfile: str, sizes: list[int], seconds: float) -> dict[str, object]:
    sctx, cctx = contexts(certfile, keyfile)
    pair = Pair(sctx, cctx)
    pair.handshake()
    out: dict[str, object] = {"cipher": pair.server.cipher()[0], "version": pair.server.version(),
                              "openssl": ssl.OPENSSL_VERSION, "frames": {}}
    for size in sizes:
        header = 2 if size < 126 else 4 if size < 65536 else 10  # server-to-client frame header, unmasked
        frame = os.urandom(size + header)
        batch = max(1, min(2000, (4 << 20) // len(frame)))
        enc: list[float] = []
        dec: list[float] = []
        leg(pair, frame, batch)  # warm-up
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(enc) < 3:
            e, d = leg(pair, frame, batch)
            enc.append(e)
            dec.append(d)
        e_us, d_us = statistics.median(enc) * 1e6, statistics.median(dec) * 1e6
        out["frames"][str(size)] = {  # type: ignore[index]
            "encrypt_us": e_us, "decrypt_us": d_us, "leg_us": e_us + d_us,
            "leg_mb_per_s": size / (e_us + d_us), "batches": len(enc)}
    hs: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(hs) < 5:
        p = Pair(sctx, cctx)
        p.handshake()
        hs.append(p.server_handshake_s)
    out["handshake_us"] = statistics.median(hs) * 1e6
    out["handshakes"] = len(hs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--certfile", required=True)
    p.add_argument("--keyfile", required=True)
    p.add_argument("--sizes", default="64,256,65536,1048576")
    p.add_argument("--seconds", type=float, default=0.3)
    a = p.parse_args()
    result = measure(a.certfile, a.keyfile, [int(s) for s in a.sizes.split(",")], a.seconds)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
