"""``OutputStream.lines()`` over the C line iterator (``_lineiter.c``).

Importing this module fails with :class:`ImportError` when the C module was not
built (no C compiler when aioproc was installed); ``lines()`` then uses the
async generator in :mod:`aioproc._streams`, with the same behaviour. Here the C
type cuts and hands out the lines, one per ``async for`` step with no Python
code run; :meth:`_Feeder.refill` runs once per chunk (or per budget)::

    _read(127 KiB) ──> LineSplitter.feed_region ──> (text, end) ──load_text──┐
         ▲                  (a list in rare cases ──load──)                   ▼
         │                                       C: find "\n", substring, pieces
         └──── refill(): budget used up -> checkpoint; chunk used up -> read ◄┘

A checkpoint comes every :data:`~aioproc._streams.LINES_PER_CHECKPOINT` lines
(the iterator counts them), so a fast child cannot starve the loop, as with the
generator. Unlike a generator, the iterator survives a cancellation while it
waits for data: nothing read is lost, and iterating again goes on where it
stopped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from anyio.lowlevel import checkpoint

from ._lineiter import LineIter
from ._streams import LINES_PER_CHECKPOINT, MAX_LINE, TRANSIENT_CHUNK, LineSplitter

if TYPE_CHECKING:
    from ._streams import OutputStream

__all__ = ["fast_lines"]


class _Feeder:
    """Reads and splits for one :class:`LineIter` (which holds only this
    feeder's bound :meth:`refill`: no reference cycle)."""

    __slots__ = ("_done", "_keepends", "_lines", "_splitter", "_stop", "_stream", "_text")

    def __init__(self, stream: OutputStream, keepends: bool) -> None:
        self._stream = stream
        self._keepends = keepends
        self._splitter = LineSplitter(keepends)
        # What the iterator was last given: whole lines of a text up to _stop
        # (the usual case: it cuts them itself), or a list of lines.
        self._text: str | None = None
        self._lines: list[str] | None = None
        self._stop = 0
        self._done = False  # EOF reached: the splitter was flushed

    async def refill(self, iterator: LineIter) -> str:
        """The next line, once *iterator* has handed out what it was given or
        used up its budget; gives it the lines that follow.

        :raises StopAsyncIteration: at the end.
        """
        position = iterator.position()
        while (self._text is None and self._lines is None) or position >= self._stop:
            self._text = self._lines = None
            if self._done:
                raise StopAsyncIteration
            data = await self._stream._read(TRANSIENT_CHUNK)
            if data:
                region = self._splitter.feed_region(data)
            else:
                region = self._splitter.flush()
                self._done = True
            position = 0
            if isinstance(region, list):
                if region:
                    self._lines, self._stop = region, len(region)
            elif region[1]:
                self._text, self._stop = region
        if iterator.budget() <= 0:
            await checkpoint()
            iterator.set_budget(LINES_PER_CHECKPOINT)
        if self._text is not None:
            return iterator.load_text(self._text, position, self._stop, self._keepends, MAX_LINE)
        assert self._lines is not None
        return iterator.load(self._lines, position, self._stop)


def fast_lines(stream: OutputStream, keepends: bool) -> AsyncIterator[str]:
    """The async iterator of ``stream.lines(keepends)`` over the C type."""
    iterator = LineIter(_Feeder(stream, keepends).refill)
    iterator.set_budget(LINES_PER_CHECKPOINT)
    return iterator
