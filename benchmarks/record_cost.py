"""User-space instructions to protect one TLS 1.3 record: OpenSSL's record layer against our own (EVP directly).

Run (from the repository root; needs Debian's ``valgrind`` and the compiled TLS engine)::

    python benchmarks/record_cost.py [--size 64] [--records 2000] [--suite TLS_AES_256_GCM_SHA384]

For each of four operations it runs a child process under ``valgrind --tool=callgrind`` that collects only inside
one C function of ``uringws/tls/_engine.c`` (``--toggle-collect``), so the count is that function with all it calls,
and nothing of the Python around it:

- ``Engine_write``: ``SSL_write_ex`` of ``size`` bytes on a TLS 1.3 connection (what every send costs today);
- ``Engine_seal``: the same record sealed by ``_tls13.h`` (``Engine._seal``: EVP AEAD on the connection's own
  traffic key, straight into a new bytes object);
- ``Engine_read_all``: decrypting one such record from the client through ``SSL_read_ex`` (the receive path's call);
- ``Engine_open``: the same record opened by ``_tls13.h`` (``Engine._open``).

Each child makes an in-memory connection (a stdlib client, the engine as the server, ``num_tickets = 0``),
sends ``records`` records one way or the other, and prints nothing; the parent prints instructions per record.
The Python objects each function makes (a bytes object, a buffer view) are counted on both sides alike.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPS = ("Engine_write", "Engine_seal", "Engine_read_all", "Engine_open")


def child(op: str, size: int, records: int, suite: str) -> None:
    sys.path.insert(0, str(ROOT))
    import ssl

    import trustme

    from uringws.tls import engine as engine_mod

    ca = trustme.CA()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(sctx)
    sctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sctx.num_tickets = 0
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(cctx)
    assert engine_mod._engine is not None, "the compiled TLS engine is not in use"
    eng = engine_mod._engine.Engine(sctx, True, record_keys=True, own_writes=False)
    sobj = engine_mod.CompiledSSLObject(eng)
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    cobj = cctx.wrap_bio(cin, cout, server_hostname="localhost")
    for _ in range(10):
        try:
            cobj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        eng.incoming.write(cout.read())
        try:
            sobj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        cin.write(eng.outgoing.read())
        if done:
            break
    assert eng.cipher()[0] == suite, f"negotiated {eng.cipher()[0]}: pass --suite with it, or set OPENSSL_CONF"
    assert eng._record_keys()
    data = b"m" * size
    buf = bytearray(size + 64)
    if op in ("Engine_read_all", "Engine_open"):
        sealed = []
        for _ in range(records):
            cobj.write(data)
            sealed.append(cout.read())
        for rec in sealed:
            if op == "Engine_open":
                assert eng._open(rec) == (23, data)
            else:
                eng.incoming.write(rec)
                assert eng.read_all(buf) == size
    else:
        for _ in range(records):
            if op == "Engine_seal":
                eng._seal(23, data)
            else:
                eng.write(data)
                eng.outgoing.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--suite", default="TLS_AES_256_GCM_SHA384")
    ap.add_argument("--child", choices=OPS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.size, args.records, args.suite)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for op in OPS:
            out = Path(tmp) / f"cg.{op}"
            cmd = [
                "valgrind",
                "--tool=callgrind",
                f"--toggle-collect={op}",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                op,
                "--size",
                str(args.size),
                "--records",
                str(args.records),
                "--suite",
                args.suite,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONMALLOC": "malloc"})
            m = re.search(r"Collected : (\d+)", proc.stderr)
            if proc.returncode or m is None:
                sys.exit(f"{op}: valgrind failed\n{proc.stderr[-2000:]}")
            results[op] = int(m.group(1)) / args.records
    print(f"{args.suite}, {args.size}-byte records, {args.records} each, user-space instructions per record:")
    for op in OPS:
        print(f"  {op:16s} {results[op]:10,.0f}")
    print(
        f"  write: own / OpenSSL = {results['Engine_seal'] / results['Engine_write']:.2f}; "
        f"read: own / OpenSSL = {results['Engine_open'] / results['Engine_read_all']:.2f}"
    )


if __name__ == "__main__":
    main()
