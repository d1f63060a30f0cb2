"""The send path under real short writes: every byte echoed back intact, or the test fails (docs/design.md §5)."""

from __future__ import annotations

import socket

import pytest

import uringws.loop
from uringws.ring import probe

from .echo_harness import ConnResult, run_echo_torture
from .naive import HardlinkedNaiveSendTransport, LinkedNaiveSendTransport, NaiveSendTransport

pytestmark = pytest.mark.skipif(not probe.availability().usable, reason="io_uring unusable here")


def _assert_intact(results: list[ConnResult], connections: int) -> None:
    assert len(results) == connections
    bad = [r for r in results if not r.ok]
    assert not bad, f"{len(bad)} of {connections} connections corrupted, e.g. {bad[0]}"
    assert all(r.sent_len > 0 for r in results)


@pytest.mark.parametrize("direct_send", [True, False], ids=["direct-send", "ring-only"])
def test_echo_short_writes(direct_send: bool) -> None:
    loop = uringws.loop.EventLoop(direct_send=direct_send)
    try:
        results = run_echo_torture(loop, connections=20, msgs=12, max_msg=1024 * 1024, seed=7)
        _assert_intact(results, 20)
        stats = loop.send_stats
        # Proof that the path under test ran: the kernel really took only part of many sends.
        assert stats.short_sends >= 20, stats
        if not direct_send:
            assert stats.direct_sends == 0
            assert stats.send_bytes == sum(r.sent_len for r in results)
    finally:
        loop.close()


def test_echo_short_writes_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    loop = uringws.loop.EventLoop(direct_send=False)
    try:
        try:
            results = run_echo_torture(loop, connections=8, msgs=8, max_msg=512 * 1024, seed=3,
                                       family=socket.AF_INET6)
        except OSError as exc:
            pytest.skip(f"no ::1 here: {exc}")
        _assert_intact(results, 8)
        assert loop.send_stats.short_sends > 0
    finally:
        loop.close()


@pytest.mark.slow
@pytest.mark.parametrize("direct_send", [True, False], ids=["direct-send", "ring-only"])
def test_echo_short_writes_200_connections_8mib(direct_send: bool) -> None:
    loop = uringws.loop.EventLoop(direct_send=direct_send)
    try:
        results = run_echo_torture(loop, connections=200, msgs=10, max_msg=8 * 1024 * 1024, seed=11,
                                   timeout=900)
        _assert_intact(results, 200)
        assert loop.send_stats.short_sends >= 200
    finally:
        loop.close()


@pytest.mark.parametrize("transport_class", [NaiveSendTransport, LinkedNaiveSendTransport,
                                             HardlinkedNaiveSendTransport],
                         ids=["naive", "naive-linked", "naive-hardlinked"])
def test_naive_sender_is_caught(transport_class: type) -> None:
    """Mutation proof: the same torture with several sends in flight and remainders dropped must fail."""
    loop = uringws.loop.EventLoop(transport_class=transport_class)
    try:
        results = run_echo_torture(loop, connections=20, msgs=12, max_msg=1024 * 1024, seed=7)
        assert len(results) == 20
        assert loop.send_stats.short_sends > 0  # it did meet short completions...
        bad = [r for r in results if not r.ok]
        assert bad, "the hash check did not catch a sender that drops the remainder of short sends"
        # ...and the check sees the damage as a byte stream that differs from the one written.
        assert all(r.recv_hash != r.sent_hash for r in bad)
    finally:
        loop.close()
