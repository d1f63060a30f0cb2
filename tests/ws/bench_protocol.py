"""Micro-benchmark of the sans-I/O hot path (not a test): .venv/bin/python tests/ws/bench_protocol.py"""

import os
import time
import timeit

from uringws.ws.frames import apply_mask, parse_frame, serialize_frame
from uringws.ws.protocol import Protocol, Side

p64 = os.urandom(64)
mask = os.urandom(4)
wire = serialize_frame(2, p64, mask=mask)
twire = serialize_frame(1, b"a" * 64, mask=mask)


def best(stmt, n=200000):
    # process CPU time, not wall time: the shared 2-core box is noisy
    return min(timeit.repeat(stmt, number=n, repeat=5, timer=time.process_time)) / n * 1e6


s = Protocol(Side.SERVER)


def proto_recv():
    s.receive_data(wire)
    s.events_received()


def proto_recv_text():
    s.receive_data(twire)
    s.events_received()


def proto_send():
    s.send_binary(p64)
    s.data_to_send()


c = Protocol(Side.CLIENT)


def client_send():
    c.send_binary(p64)
    c.data_to_send()


print(f"parse_frame+unmask 64B:     {best(lambda: parse_frame(wire, masked=True)):.2f} us")
print(f"apply_mask 64B:             {best(lambda: apply_mask(p64, mask)):.2f} us")
print(f"serialize_frame 64B server: {best(lambda: serialize_frame(2, p64)):.2f} us")
print(f"serialize_frame 64B masked: {best(lambda: serialize_frame(2, p64, mask=mask)):.2f} us")
print(f"Protocol.receive_data 64B binary (server, masked) + events: {best(proto_recv):.2f} us")
print(f"Protocol.receive_data 64B text   (server, masked) + events: {best(proto_recv_text):.2f} us")
print(f"Protocol.send_binary 64B (server) + data_to_send: {best(proto_send):.2f} us")
print(f"Protocol.send_binary 64B (client, masked, urandom) + data_to_send: {best(client_send):.2f} us")
