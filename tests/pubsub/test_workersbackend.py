"""The cross-worker relay's framing, whatever the chunking of the socketpair's stream."""

from __future__ import annotations

from uringws.pubsub.workersbackend import PUBLISH, READY, SUBSCRIBE, FrameReader, encode


def test_frames_survive_any_split() -> None:
    frames = [encode(READY), encode(SUBSCRIBE, "room"), encode(PUBLISH, "röom", b"t" + "héllo".encode()),
              encode(PUBLISH, "room", b"b" + bytes(range(256)) * 300)]
    stream = b"".join(frames)
    expected = [(READY, "", b""), (SUBSCRIBE, "room", b""), (PUBLISH, "röom", b"t" + "héllo".encode()),
                (PUBLISH, "room", b"b" + bytes(range(256)) * 300)]
    for step in (1, 2, 3, 7, 1000, len(stream)):
        reader = FrameReader()
        got = []
        for i in range(0, len(stream), step):
            got += reader.feed(stream[i : i + step])
        assert [(k, c, p) for k, c, p, _ in got] == expected, step
        assert [raw for *_, raw in got] == frames  # what the supervisor forwards as it is
