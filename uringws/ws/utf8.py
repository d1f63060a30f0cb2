"""Incremental UTF-8 validation that fails as soon as a byte sequence can no longer become valid UTF-8."""

from __future__ import annotations

import codecs

from .exceptions import InvalidUTF8

__all__ = ["IncrementalUTF8Decoder"]

_Decoder = codecs.getincrementaldecoder("utf-8")


class IncrementalUTF8Decoder:
    """Decode UTF-8 split at arbitrary byte boundaries; raise InvalidUTF8 (close code 1007) early.

    CPython's incremental decoder already rejects most impossible prefixes at once (``b"\\xf4\\x90"``,
    ``b"\\xe0\\x80"``), but it keeps ``b"\\xed\\xa0"``..``b"\\xed\\xbf"`` (the start of a UTF-16 surrogate,
    never valid) pending until the third byte arrives; the extra check below closes that gap.
    """

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = _Decoder("strict")

    def decode(self, data: bytes, final: bool = False) -> str:
        """Return the text decoded so far; bytes of an unfinished character are kept for the next call."""
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError:
            raise InvalidUTF8() from None
        if not final and data and data[-1] >= 0x80:
            pending = self._decoder.getstate()[0]
            if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                raise InvalidUTF8()
        return text

    def reset(self) -> None:
        """Forget any pending partial character (start of a new message)."""
        self._decoder.reset()
