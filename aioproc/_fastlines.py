"""``OutputStream.lines()`` over the C line iterator (``_lineiter.c``).

Importing this module fails with :class:`ImportError` when the C module was not
built (no C compiler when aioproc was installed); ``lines()`` then uses the
async generator in :mod:`aioproc._streams`, with the same behaviour. Here the C
type hands out the lines it holds, one per ``async for`` step with no Python
code run; :meth:`_Feeder.refill` runs once per batch::

    _read(127 KiB) ──> LineSplitter.feed ──> lines ──load(≤4096)──> C: line, line, ...
         ▲                                                              │ used up
         └──────────── refill(): checkpoint between batches ◄───────────┘

Batches are at most :data:`~aioproc._streams.LINES_PER_CHECKPOINT` lines and a
checkpoint separates two batches of one chunk, so a fast child cannot starve the
loop, as with the generator. Unlike a generator, the iterator survives a
cancellation while it waits for data: nothing read is lost, and iterating again
goes on where it stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from anyio.lowlevel import checkpoint

from ._lineiter import LineIter
from ._streams import LINES_PER_CHECKPOINT, TRANSIENT_CHUNK, LineSplitter

if TYPE_CHECKING:
    from ._streams import OutputStream

__all__ = ["fast_lines"]


class _Feeder:
    """Reads and splits for one :class:`LineIter` (which holds only this
    feeder's bound :meth:`refill`: no reference cycle)."""

    __slots__ = ("_budget", "_done", "_lines", "_next", "_splitter", "_stream")

    def __init__(self, stream: OutputStream, keepends: bool) -> None:
        self._stream = stream
        self._splitter = LineSplitter(keepends)
        self._lines: list[str] = []  # the current chunk's lines
        self._next = 0  # the first of them not handed to the iterator yet
        self._budget = LINES_PER_CHECKPOINT  # lines until a checkpoint is due
        self._done = False  # EOF reached: the splitter was flushed

    async def refill(self, iterator: LineIter) -> str:
        """The next line, once *iterator* has handed out all it held; the lines
        after it go to *iterator* (up to the next checkpoint).

        :raises StopAsyncIteration: at the end.
        """
        while self._next >= len(self._lines):
            if self._done:
                raise StopAsyncIteration
            data = await self._stream._read(TRANSIENT_CHUNK)
            if data:
                self._lines = self._splitter.feed(data)
            else:
                self._lines = self._splitter.flush()
                self._done = True
            self._next = 0
        if self._budget <= 0:
            await checkpoint()
            self._budget = LINES_PER_CHECKPOINT
        start = self._next
        stop = min(len(self._lines), start + self._budget)
        self._next = stop
        self._budget -= stop - start
        return iterator.load(self._lines, start, stop)


def fast_lines(stream: OutputStream, keepends: bool) -> AsyncIterator[str]:
    """The async iterator of ``stream.lines(keepends)`` over the C type."""
    return LineIter(_Feeder(stream, keepends).refill)
