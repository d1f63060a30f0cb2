"""RingSelector on its own: the selectors contract with one-shot polls re-armed (level-triggered)."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Iterator

import pytest

from uringws.loop.selector import RingSelector
from uringws.ring import Ring, probe

pytestmark = pytest.mark.skipif(not probe.availability().usable, reason="io_uring unusable here")


@pytest.fixture
def sel() -> Iterator[RingSelector]:
    s = RingSelector(Ring(64))
    yield s
    s.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_level_triggered_read(sel: RingSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    key = sel.register(a, selectors.EVENT_READ, "data")
    assert sel.select(0) == []
    b.send(b"xy")
    assert sel.select(1) == [(key, selectors.EVENT_READ)]
    # Not drained: reported again, and again after reading only part.
    assert sel.select(1) == [(key, selectors.EVENT_READ)]
    a.recv(1)
    assert sel.select(1) == [(key, selectors.EVENT_READ)]
    a.recv(1)
    assert sel.select(0.02) == []


def test_modify_and_unregister(sel: RingSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sel.register(a, selectors.EVENT_READ)
    assert sel.select(0.01) == []
    key = sel.modify(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "rw")
    assert sel.get_key(a) is key and key.data == "rw"
    assert sel.select(1) == [(key, selectors.EVENT_WRITE)]
    b.send(b"z")
    assert sel.select(1) == [(key, selectors.EVENT_READ | selectors.EVENT_WRITE)]
    assert sel.unregister(a) is key
    # The removed poll's completion (or a race with a real event) must not resurface.
    t0 = time.monotonic()
    assert sel.select(0.02) == []
    assert time.monotonic() - t0 < 1
    with pytest.raises(KeyError):
        sel.get_key(a)
    with pytest.raises(KeyError):
        sel.unregister(a)


def test_register_errors_and_map(sel: RingSelector, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sel.register(a.fileno(), selectors.EVENT_READ)
    with pytest.raises(KeyError):
        sel.register(a, selectors.EVENT_READ)
    with pytest.raises(ValueError):
        sel.register(b, 0)
    with pytest.raises(ValueError):
        sel.register(-1, selectors.EVENT_READ)
    with pytest.raises(KeyError):
        sel.modify(b, selectors.EVENT_READ)
    m = sel.get_map()
    assert len(m) == 1 and a.fileno() in m and m[a].fd == a.fileno()
    assert list(m) == [a.fileno()]


def test_register_unregister_same_iteration_costs_nothing(sel: RingSelector,
                                                         pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.send(b"x")
    sel.register(a, selectors.EVENT_READ)
    sel.unregister(a)
    assert sel.select(0.01) == []
    assert sel.ring.in_flight == 0  # lazy arming: no poll was ever submitted


def test_select_timeout(sel: RingSelector) -> None:
    t0 = time.monotonic()
    assert sel.select(0.05) == []
    assert 0.04 <= time.monotonic() - t0 < 1
