"""A `selectors.BaseSelector` whose readiness comes from io_uring POLL_ADD, for asyncio's selector loop.

asyncio needs level-triggered readiness: a reader that does not drain its fd must be woken again. Multishot
poll is edge-like (it posts only on new wake-ups), so each registered fd gets a ONE-SHOT poll that is re-armed
after it fires. Arming is lazy: `register()`/`modify()` only mark the fd, and `select()` arms (or replaces) the
polls of all marked fds right before it enters the kernel, so a register/modify/unregister burst within one
loop iteration costs one SQE, and the SQEs go to the kernel in the same `io_uring_enter` that waits.

`select()` is also where ring-native transports get their completions: `Ring.wait()` runs their callbacks
directly, and `before_wait` hooks (pending sends) run just before it.
"""

from __future__ import annotations

import errno
import select as _select
import selectors
from collections.abc import Callable, Iterator, Mapping, Sized
from typing import Any

__all__ = ["RingSelector"]

_POLLIN = _select.POLLIN
_POLLOUT = _select.POLLOUT
_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE


def _poll_mask(events: int) -> int:
    mask = 0
    if events & _EVENT_READ:
        mask |= _POLLIN
    if events & _EVENT_WRITE:
        mask |= _POLLOUT
    return mask


class _Map(Mapping[Any, selectors.SelectorKey]):
    """Read-only file object -> key mapping (what `get_map()` returns), like the stdlib selectors'."""

    def __init__(self, selector: RingSelector) -> None:
        self._selector = selector

    def __len__(self) -> int:
        return len(self._selector._keys)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._selector._fileobj_lookup(fileobj)
        try:
            return self._selector._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._selector._keys)


class RingSelector(selectors.BaseSelector):
    """Level-triggered readiness over one-shot io_uring polls; `select()` drives the whole ring."""

    # Slots for what the loop's iteration reads every time (the compiled one reads them in place); the rest of the
    # state stays in the instance's __dict__ (BaseSelector has one).
    __slots__ = ("_dirty", "_ready", "before_wait", "ring")

    def __init__(self, ring: Any) -> None:
        self.ring = ring
        self._keys: dict[int, selectors.SelectorKey] = {}
        # fd -> (user_data, poll mask, token) of the poll armed for it; at most one per fd. The token tells a
        # live poll's completion from a stale one (removed or replaced) without knowing user_data in advance.
        self._armed: dict[int, tuple[int, int, int]] = {}
        self._token = 0
        self._dirty: set[int] = set()
        self._ready: dict[int, int] = {}
        self._map = _Map(self)
        #: called (and cleared) at the start of every select(): transports queue their deferred sends here
        self.before_wait: list[Callable[[], Any]] = []
        #: the owning loop's ready queue (set by the loop): if a hook schedules a callback (a send that fails
        #: closes its transport with call_soon), select() must not wait -- the loop computed its timeout before
        self.loop_ready: Sized | None = None
        #: set while the ring is being torn down: completion callbacks must not submit anything new
        self.closing = False
        self.closed = False

    # -- registration ---------------------------------------------------------------------------------------
    def _fileobj_lookup(self, fileobj: Any) -> int:
        if isinstance(fileobj, int):
            fd = fileobj
        else:
            try:
                fd = int(fileobj.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fileobj!r}") from None
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        return fd

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(_EVENT_READ | _EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = self._fileobj_lookup(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        self._dirty.add(fd)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._fileobj_lookup(fileobj)
        try:
            key = self._keys.pop(fd)
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        self._ready.pop(fd, None)
        self._disarm(fd)
        self._dirty.discard(fd)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~(_EVENT_READ | _EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = self._fileobj_lookup(fileobj)
        try:
            old = self._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None
        key = old._replace(events=events, data=data)
        self._keys[fd] = key
        if events != old.events:
            self._dirty.add(fd)
        return key

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._map

    # -- polls ----------------------------------------------------------------------------------------------
    def _disarm(self, fd: int) -> None:
        armed = self._armed.pop(fd, None)
        if armed is not None and not self.closing:
            # Its completion (-ECANCELED, or a real event racing the removal) then finds a stale user_data.
            self.ring.poll_remove(armed[0])

    def _arm_dirty(self) -> None:
        ring = self.ring
        armed = self._armed
        keys = self._keys
        for fd in self._dirty:
            key = keys.get(fd)
            if key is None:
                continue
            mask = _poll_mask(key.events)
            current = armed.get(fd)
            if current is not None:
                if current[1] == mask:
                    continue
                ring.poll_remove(current[0])
            self._token += 1
            token = self._token
            ud = ring.poll_add(fd, mask, lambda res, flags, fd=fd, token=token: self._on_poll(fd, token, res))
            armed[fd] = (ud, mask, token)
        self._dirty.clear()

    def _on_poll(self, fd: int, token: int, res: int) -> None:
        current = self._armed.get(fd)
        if current is None or current[2] != token:
            return  # a poll that was removed or replaced: its news is stale
        del self._armed[fd]
        key = self._keys.get(fd)
        if key is None:
            return
        if res < 0:
            if res == -errno.ECANCELED:
                if not self.closing:
                    self._dirty.add(fd)
                return
            if res == -errno.EBADF:
                # Closed while registered (a caller bug): report it once so the callback sees the error, but
                # don't re-arm, which would spin.
                self._ready[fd] = self._ready.get(fd, 0) | key.events
                return
            events = key.events
        else:
            # Same mapping as EpollSelector: anything but plain POLLIN wakes writers (errors, hang-ups), and
            # anything but plain POLLOUT wakes readers.
            events = 0
            if res & ~_POLLIN:
                events |= _EVENT_WRITE
            if res & ~_POLLOUT:
                events |= _EVENT_READ
        self._ready[fd] = self._ready.get(fd, 0) | events
        self._dirty.add(fd)  # level-triggered: poll again (submitted at the next select, after the callbacks)

    # -- waiting --------------------------------------------------------------------------------------------
    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        hooks = self.before_wait
        if hooks:
            while hooks:
                # A hook may add hooks (a TLS layer's flush writes to its socket, whose flush is a hook too): run
                # them all before waiting, or those bytes would sit until some unrelated completion.
                self.before_wait = []
                for hook in hooks:
                    hook()
                hooks = self.before_wait
            if self.loop_ready:
                timeout = 0
        if self._dirty:
            self._arm_dirty()
        if timeout is not None and timeout < 0:
            timeout = 0
        self.ring.wait(timeout)
        if not self._ready:
            return []
        return self.take_ready()

    def take_ready(self) -> list[tuple[selectors.SelectorKey, int]]:
        """The events the polls reported since the last call, for the fds still registered (and forget them).

        The end of select(); the loop calls it itself after waiting on the ring directly.
        """
        ready = self._ready
        self._ready = {}
        keys = self._keys
        out = []
        for fd, events in ready.items():
            key = keys.get(fd)
            if key is not None:
                ev = events & key.events
                if ev:
                    out.append((key, ev))
        return out

    def close(self) -> None:
        """Forget every registration and close the ring (in-flight operations are cancelled and reaped)."""
        if self.closed:
            return
        self.closing = True
        self._keys.clear()
        self._armed.clear()
        self._dirty.clear()
        self._ready.clear()
        try:
            self.ring.close()
        finally:
            self.closed = True
