"""asyncio event loop and stream transports on io_uring, with an epoll fallback (see docs/design.md §2-§4)."""

from .events import EventLoop, new_event_loop
from .selector import RingSelector
from .sendqueue import SendQueue
from .transports import RingSocketTransport, SendStats

__all__ = ["EventLoop", "RingSelector", "RingSocketTransport", "SendQueue", "SendStats", "new_event_loop"]
