"""uringws: WebSockets over TLS on Linux io_uring, with a send path that cannot lose or reorder a byte."""

__version__ = "0.1.0.dev0"
