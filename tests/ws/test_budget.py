"""The frame parser's memory-budget bookkeeping (sans-I/O): what a received message reserves, when it gives it
back, and that a message over the budget fails only its connection with 1009."""

from __future__ import annotations

import os

import pytest

from uringws.ws.budget import BUDGET_MIN, MemoryBudget
from uringws.ws.deflate import DeflateParams, PerMessageDeflate
from uringws.ws.frames import serialize_frame
from uringws.ws.protocol import Fragment, Protocol, Side, State

MIB = 1 << 20


def masked(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    return serialize_frame(opcode, payload, fin, rsv1, os.urandom(4))


def server(budget: MemoryBudget, **kwargs: object) -> tuple[Protocol, list[str | bytes]]:
    got: list[str | bytes] = []
    proto = Protocol(Side.SERVER, max_size=4 * MIB, budget=budget, message_sink=got.append, **kwargs)  # type: ignore[arg-type]
    return proto, got


def test_a_large_frame_reserves_from_its_header_until_the_application_takes_it() -> None:
    budget = MemoryBudget(8 * MIB)
    proto, got = server(budget)
    payload = os.urandom(MIB)
    frame = masked(0x2, payload)
    proto.receive_data(frame[:1000])  # the header and a little: the payload buffer is allocated now
    assert budget.used == MIB
    proto.receive_data(frame[1000:])
    assert got == [payload]
    assert budget.used == MIB  # queued, not yet taken
    proto.release_message(got[0])
    assert budget.used == 0 and proto.held == {}
    assert budget.peak == MIB


def test_a_whole_large_frame_in_one_read_is_counted_too() -> None:
    budget = MemoryBudget(8 * MIB)
    proto, got = server(budget)
    proto.receive_data(masked(0x1, b"x" * (2 * MIB)))
    assert got == ["x" * (2 * MIB)] and budget.used == 2 * MIB
    proto.release_message(got[0])
    assert budget.used == 0


def test_small_messages_are_not_counted() -> None:
    budget = MemoryBudget(BUDGET_MIN)
    proto, got = server(budget)
    data = b"".join(masked(0x2, os.urandom(BUDGET_MIN - 1)) for _ in range(10))
    proto.receive_data(data[:5000])
    proto.receive_data(data[5000:])
    assert len(got) == 10 and budget.used == 0 and budget.peak == 0 and proto.held == {}


def test_a_fragmented_message_of_small_frames_is_counted_as_it_grows() -> None:
    budget = MemoryBudget(8 * MIB)
    proto, got = server(budget)
    part = os.urandom(BUDGET_MIN // 4)
    proto.receive_data(masked(0x2, part, fin=False) + masked(0x0, part, fin=False) + masked(0x0, part, fin=False))
    assert budget.used == 0  # 48 KiB so far: below BUDGET_MIN
    proto.receive_data(masked(0x0, part, fin=False))
    assert budget.used == BUDGET_MIN
    proto.receive_data(masked(0x0, part, fin=True))
    assert got == [part * 5] and budget.used == len(part) * 5
    proto.release_message(got[0])
    assert budget.used == 0


def test_a_message_over_the_budget_fails_the_connection_with_1009() -> None:
    budget = MemoryBudget(3 * MIB)
    assert budget.reserve(2 * MIB)  # other connections hold 2 MiB
    proto, got = server(budget)
    proto.receive_data(masked(0x2, os.urandom(MIB), fin=False))
    assert budget.used == 3 * MIB
    proto.receive_data(masked(0x0, b"y" * 1000, fin=True)[:10])  # one more KiB is over the budget
    assert proto.close_expected and proto.state is State.CLOSING
    assert proto.close_sent is not None and proto.close_sent.code == 1009
    assert "memory budget" in proto.close_sent.reason
    assert got == [] and budget.used == 2 * MIB and budget.refused == 1  # the partial message was dropped


def test_connection_end_gives_back_queued_and_partial_messages() -> None:
    budget = MemoryBudget(None)  # unlimited: counts all the same
    proto, got = server(budget)
    proto.receive_data(masked(0x2, os.urandom(MIB)) + masked(0x2, os.urandom(MIB)) + masked(0x2, b"z" * MIB)[:100])
    assert len(got) == 2 and budget.used == 3 * MIB
    proto.release_message(got[0])
    assert budget.used == 2 * MIB
    proto.receive_eof()  # an abnormal close: one message queued, one half received
    assert budget.used == 0 and proto.held == {}
    proto.release_message(got[1])  # taken from the queue after the end: nothing more to give back
    assert budget.used == 0


def test_a_close_frame_in_the_middle_of_a_message_drops_it() -> None:
    budget = MemoryBudget(8 * MIB)
    proto, got = server(budget)
    proto.receive_data(masked(0x2, os.urandom(MIB), fin=False) + masked(0x8, b"\x03\xe8"))
    assert got == [] and proto.close_rcvd is not None
    assert budget.used == 0


def test_fragments_are_given_back_as_they_are_delivered() -> None:
    budget = MemoryBudget(8 * MIB)
    proto, _ = server(budget, stream_fragments=True)
    proto.receive_data(masked(0x2, os.urandom(MIB), fin=False)[:100])
    assert budget.used == MIB
    proto.receive_data(b"")  # nothing new
    proto.fail(1000)
    proto.receive_data(b"x")  # closing: the partial frame is dropped
    assert budget.used == 0
    proto, _ = server(budget, stream_fragments=True)
    proto.receive_data(masked(0x2, os.urandom(MIB), fin=False) + masked(0x0, os.urandom(MIB), fin=True))
    events = proto.events_received()
    assert [type(e) for e in events] == [Fragment, Fragment] and budget.used == 0


def test_a_compressed_message_counts_its_decompressed_size() -> None:
    budget = MemoryBudget(8 * MIB)
    client = Protocol(Side.CLIENT, deflate=PerMessageDeflate(DeflateParams(), False), max_size=None)
    proto, got = server(budget, deflate=PerMessageDeflate(DeflateParams(), True))
    client.send_binary(b"a" * (2 * MIB))  # compresses to a few KiB
    proto.receive_data(b"".join(client.data_to_send()))
    assert got == [b"a" * (2 * MIB)] and budget.used == 2 * MIB
    proto.release_message(got[0])
    assert budget.used == 0
    small = MemoryBudget(MIB)
    proto, got = server(small, deflate=PerMessageDeflate(DeflateParams(), True))
    client.send_binary(b"b" * (2 * MIB))
    proto.receive_data(b"".join(client.data_to_send()))
    assert got == [] and proto.close_sent is not None and proto.close_sent.code == 1009 and small.used == 0


def test_budget_rejects_a_negative_limit_and_over_release() -> None:
    with pytest.raises(ValueError, match="max_memory"):
        MemoryBudget(-1)
    budget = MemoryBudget(10)
    assert budget.reserve(10) and not budget.reserve(1)
    budget.release(10)
    with pytest.raises(RuntimeError, match="more than reserved"):
        budget.release(1)


def test_held_bytes_go_over_the_limit_and_refuse_what_follows() -> None:
    budget = MemoryBudget(2 * MIB)
    budget.hold(3 * MIB)  # output waiting to be written: never refused
    assert (budget.used, budget.peak, budget.refused) == (3 * MIB, 3 * MIB, 0)
    proto, _ = server(budget)
    proto.receive_data(masked(0x2, os.urandom(BUDGET_MIN))[:100])
    assert proto.close_sent is not None and proto.close_sent.code == 1009
    assert budget.refused == 1
    budget.release(3 * MIB)
    assert budget.used == 0 and budget.peak == 3 * MIB
