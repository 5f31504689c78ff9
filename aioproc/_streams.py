"""OutputStream: a child's stdout or stderr, read as chunks, lines or a whole.

The stream owns the parent's (non-blocking) read end of the pipe. Every way of
reading goes through :meth:`OutputStream._read_nowait`, which counts the bytes
against ``max_output`` and shows them to an optional tap (the ProcessManager's
output tail); nothing is buffered beyond what the caller asked for, so a child
whose output is not read blocks on a full pipe (backpressure)::

    pipe ──os.read──> _read_nowait ──> chunks    async for chunk in stream
               (limit, tap)        ──> LineSplitter ──> lines()  (str)
                                   ──> read()    (bytes to EOF)
    stdout ─┐
    stderr ─┴─ Poller ──> _MergedLines ──> Process.output(): ("stdout", line), ...

Reads try the pipe first and wait for readability only when it is empty; a
reader that never has to wait still passes a checkpoint every few reads (every
few thousand lines for ``lines()``), so a fast child cannot starve the loop.
``lines()`` splits a whole chunk at once and hands its lines out from a C type
(:mod:`aioproc._fastlines`) whose ``async for`` step runs no Python code; where
the C module was not built, from an async generator (:func:`iter_lines`).
"""

from __future__ import annotations

import codecs
import os
from collections import deque
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.abc
from anyio.lowlevel import checkpoint

from ._errors import OutputLimitExceeded
from ._fdio import close_fd_now, grow_pipe_after
from ._poller import Poller

__all__ = ["MergedLines", "OutputStream", "drain_all"]

#: Read size where the bytes are kept (read()): the size of our pipes.
CHUNK = 1 << 20
#: Read size where each chunk is dropped soon after (chunk iteration, lines,
#: output(), drains). Kept under glibc's default mmap threshold (128 KiB, the
#: bytes header included): ``os.read(fd, 1 MiB)`` allocates 1 MiB and shrinks
#: it to what came, and as long as no block of 1 MiB was ever freed glibc serves
#: every such request with a fresh mmap, so the kernel faults in every page of
#: every chunk (measured: 280,000 page faults and 4x the CPU per GiB streamed,
#: depending only on the heap's history). Blocks this size are reused from the
#: heap instead.
TRANSIENT_CHUNK = 127 * 1024
#: A line longer than this many characters is yielded in pieces.
MAX_LINE = 1 << 20
#: Reads (or lines) served without waiting before a forced checkpoint.
_READS_PER_CHECKPOINT = 16
LINES_PER_CHECKPOINT = 16384


class OutputStream(anyio.abc.ByteReceiveStream):
    """The stdout or stderr pipe of a running child.

    ``async for chunk in stream`` yields ``bytes`` as they arrive (up to 127 KiB
    each); :meth:`lines` yields decoded lines; :meth:`read` returns everything to
    EOF. With ``max_output`` set, reading past that many bytes raises
    :class:`~aioproc.OutputLimitExceeded` (and keeps raising). Only one task
    should read a stream at a time.
    """

    def __init__(
        self, fd: int, name: str, *, max_output: int | None = None, cmd: object = None
    ) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self.name = name
        self._limit = max_output
        self._cmd = cmd
        self._delivered = 0
        self._eof = False
        self._exceeded = False
        self._waiting = False
        self._fast_reads = 0
        self._grown = False  # the pipe was grown (see grow_pipe_after)
        self._tap: Callable[[bytes], object] | None = None

    @property
    def fd(self) -> int:
        """The read end of the pipe, or -1 once closed."""
        return self._fd

    @property
    def at_eof(self) -> bool:
        """Whether the writer side has been read to its end."""
        return self._eof

    # -- the one place bytes come out of the pipe ---------------------------------

    def _read_nowait(self, max_bytes: int) -> bytes | None:
        """Up to *max_bytes* now; ``b""`` at EOF; ``None`` when the pipe is empty."""
        fd = self._fd
        if fd < 0:
            raise anyio.ClosedResourceError
        if self._exceeded:
            raise self._limit_error()
        if self._eof:
            return b""
        limit = self._limit
        if limit is not None:
            allowance = limit - self._delivered
            if allowance <= 0:
                try:
                    probe = os.read(fd, 1)
                except BlockingIOError:
                    return None
                if probe:
                    self._exceeded = True
                    raise self._limit_error()
                self._eof = True
                return b""
            max_bytes = min(max_bytes, allowance)
        try:
            data = os.read(fd, max_bytes)
        except BlockingIOError:
            return None
        if data:
            self._delivered += len(data)
            if not self._grown:
                self._grown = grow_pipe_after(fd, len(data))
            if self._tap is not None:
                self._tap(data)
        else:
            self._eof = True
        return data

    async def _read(self, max_bytes: int) -> bytes:
        """Up to *max_bytes*, waiting if the pipe is empty; ``b""`` at EOF."""
        if self._fast_reads >= _READS_PER_CHECKPOINT:
            self._fast_reads = 0
            await checkpoint()  # before reading: a cancellation here loses nothing
        while True:
            data = self._read_nowait(max_bytes)
            if data is not None:
                self._fast_reads += 1
                return data
            self._fast_reads = 0
            await self._wait_readable()

    async def _wait_readable(self) -> None:
        self._waiting = True
        try:
            await anyio.wait_readable(self._fd)
        finally:
            self._waiting = False

    def _limit_error(self, partial: bytes | None = None) -> OutputLimitExceeded:
        assert self._limit is not None
        kwargs = {self.name if self.name in ("stdout", "stderr") else "stdout": partial}
        return OutputLimitExceeded(self._cmd, self.name, self._limit, **kwargs)

    # -- public reading API -------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """The next chunk of at most *max_bytes*.

        :raises anyio.EndOfStream: when the child closed its end.
        :raises anyio.ClosedResourceError: when the stream was closed.
        :raises OutputLimitExceeded: when reading past ``max_output``.
        """
        data = await self._read(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return data

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> bytes:
        data = await self._read(TRANSIENT_CHUNK)
        if not data:
            raise StopAsyncIteration
        return data

    async def read(self) -> bytes:
        """Everything up to EOF.

        :raises OutputLimitExceeded: when the stream passes ``max_output``; the
            error carries what was read (at most ``max_output`` bytes).
        :raises anyio.ClosedResourceError: when the stream was closed.
        """
        chunks: list[bytes] = []
        try:
            while data := await self._read(CHUNK):
                chunks.append(data)
        except OutputLimitExceeded:
            raise self._limit_error(b"".join(chunks)) from None
        return b"".join(chunks)

    def lines(self, keepends: bool = False) -> AsyncIterator[str]:
        """An async iterator of the stream's lines, as ``str``.

        Decoded as UTF-8 with ``errors="replace"``; lines end at ``\\n`` or
        ``\\r\\n`` (kept with *keepends*); a final line without a newline is still
        yielded; a line longer than 1 MiB comes in pieces of at most 1 MiB
        characters. Data the iterator has read but not yet yielded is lost if you
        stop iterating early.
        """
        fast = fast_lines()
        if fast is not None:
            return fast(self, keepends)
        return iter_lines(self, keepends)

    # -- closing ------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the read end; a task waiting on it gets ``ClosedResourceError``."""
        self.close_now()
        await checkpoint()

    def close_now(self) -> None:
        """Synchronous :meth:`aclose` (no checkpoint)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            close_fd_now(fd)

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else "eof" if self._eof else "open"
        return f"<OutputStream {self.name} fd={self._fd} {state} read={self._delivered}>"


def _pieces(line: str) -> list[str]:
    """*line* cut into pieces of at most :data:`MAX_LINE` characters."""
    if len(line) <= MAX_LINE:
        return [line]
    return [line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE)]


class LineSplitter:
    """Bytes in, complete lines out (see :meth:`OutputStream.lines` for the rules)."""

    __slots__ = ("_carry", "_keepends", "_pending")

    def __init__(self, keepends: bool) -> None:
        self._keepends = keepends
        self._carry = ""  # text after the last newline
        self._pending = b""  # an incomplete UTF-8 sequence at the end of a chunk

    def _text(self, data: bytes) -> str:
        """The text carried over plus *data* decoded (``\r\n`` made ``\n``
        unless keepends); an incomplete UTF-8 sequence at its end waits."""
        if self._pending:
            data = self._pending + data
        text, used = codecs.utf_8_decode(data, "replace", False)
        self._pending = data[used:]
        if self._carry:
            text = self._carry + text
        if not self._keepends and "\r" in text:
            text = text.replace("\r\n", "\n")
        return text

    def feed(self, data: bytes) -> list[str]:
        """The lines *data* completes."""
        return self._split(self._text(data))

    def feed_region(self, data: bytes) -> tuple[str, int] | list[str]:
        """What :meth:`feed` gives, for the C line iterator: ``(text, end)``,
        where ``text[:end]`` is the completed lines, each ending in ``\n``,
        for the iterator to cut (``end`` is 0 when none is complete); or, in
        the rare case of an unfinished line already past :data:`MAX_LINE`,
        the list :meth:`feed` gives."""
        text = self._text(data)
        end = text.rfind("\n") + 1
        if len(text) - end > MAX_LINE:
            return self._split(text)
        self._carry = text[end:]
        return text, end

    def _split(self, text: str) -> list[str]:
        if "\n" not in text:
            self._carry = text
            return self._cut_long([]) if len(text) > MAX_LINE else []
        parts = text.split("\n")
        self._carry = parts.pop()
        lines = [part + "\n" for part in parts] if self._keepends else parts
        if len(text) > MAX_LINE and max(map(len, lines), default=0) > MAX_LINE:
            lines = [piece for line in lines for piece in _pieces(line)]
        if len(self._carry) > MAX_LINE:
            self._cut_long(lines)
        return lines

    def _cut_long(self, lines: list[str]) -> list[str]:
        carry = self._carry
        while len(carry) > MAX_LINE:
            lines.append(carry[:MAX_LINE])
            carry = carry[MAX_LINE:]
        self._carry = carry
        return lines

    def flush(self) -> list[str]:
        """The last line at EOF (even without a newline), in pieces if long."""
        tail = codecs.utf_8_decode(self._pending, "replace", True)[0] if self._pending else ""
        self._pending = b""
        text = self._carry + tail
        self._carry = ""
        return _pieces(text) if text else []


async def iter_lines(stream: OutputStream, keepends: bool) -> AsyncIterator[str]:
    """``OutputStream.lines()`` when the C line iterator is not built (see
    :func:`fast_lines`): reads (and splits) a whole chunk at a time and yields
    its lines from a plain loop.

    An async generator, because resuming one costs about two thirds of a call
    to a class's ``async def __anext__`` (CPython 3.11), and a consumer of short
    lines pays that once per line. It only awaits between chunks and every
    :data:`LINES_PER_CHECKPOINT` lines (a checkpoint, so a fast child cannot
    starve the loop); closing it early runs no clean-up.
    """
    splitter = LineSplitter(keepends)
    read = stream._read
    unchecked = 0  # lines yielded since the last checkpoint
    while True:
        data = await read(TRANSIENT_CHUNK)
        lines = splitter.feed(data) if data else splitter.flush()
        count = len(lines)
        if unchecked + count <= LINES_PER_CHECKPOINT:
            unchecked += count
            for line in lines:
                yield line
        else:
            for start in range(0, count, LINES_PER_CHECKPOINT):
                await checkpoint()
                for line in lines[start : start + LINES_PER_CHECKPOINT]:
                    yield line
            unchecked = count % LINES_PER_CHECKPOINT
        if not data:
            return


#: _fastlines.fast_lines, once looked up: None when the C module is missing;
#: see fast_lines().
_fast_lines: Callable[[OutputStream, bool], AsyncIterator[str]] | None = None
_fast_lines_known = False
#: Tests set this False to run lines() on the generator.
USE_C_LINES = True


def fast_lines() -> Callable[[OutputStream, bool], AsyncIterator[str]] | None:
    """What makes the C-backed ``lines()`` iterator (:mod:`aioproc._fastlines`),
    or None when the C module was not built at install (no C compiler) or
    :data:`USE_C_LINES` is off."""
    global _fast_lines, _fast_lines_known
    if not _fast_lines_known:
        _fast_lines_known = True
        try:
            from ._fastlines import fast_lines as make
        except ImportError:
            _fast_lines = None
        else:
            _fast_lines = make
    return _fast_lines if USE_C_LINES else None


class MergedLines:
    """``Process.output()``: ``(name, line)`` from several streams in arrival
    order, read by one task (no task group, nothing left running between items)."""

    __slots__ = ("_budget", "_queue", "_splitters", "_streams")

    def __init__(self, streams: list[OutputStream]) -> None:
        self._streams = [s for s in streams if s.fd >= 0 and not s.at_eof]
        self._splitters = {id(s): LineSplitter(False) for s in self._streams}
        self._queue: deque[tuple[str, str]] = deque()
        self._budget = LINES_PER_CHECKPOINT

    def __aiter__(self) -> MergedLines:
        return self

    async def __anext__(self) -> tuple[str, str]:
        self._budget -= 1
        if self._budget <= 0:
            self._budget = LINES_PER_CHECKPOINT
            await checkpoint()
        if self._queue:
            return self._queue.popleft()
        while self._streams:
            if not self._collect():
                await self._wait()
            if self._queue:
                return self._queue.popleft()
        raise StopAsyncIteration

    def _collect(self) -> bool:
        """Read what is there now from every stream; whether anything happened."""
        progressed = False
        queue = self._queue
        for stream in list(self._streams):
            data = stream._read_nowait(TRANSIENT_CHUNK)
            if data is None:
                continue
            progressed = True
            splitter = self._splitters[id(stream)]
            if data:
                lines = splitter.feed(data)
            else:
                lines = splitter.flush()
                self._streams.remove(stream)
            name = stream.name
            queue.extend((name, line) for line in lines)
        return progressed

    async def _wait(self) -> None:
        if len(self._streams) == 1:
            await self._streams[0]._wait_readable()
            return
        poller = Poller()
        try:
            for stream in self._streams:
                poller.register(stream.fd)
            await poller.wait()
        finally:
            poller.close()


async def drain_all(streams: list[OutputStream]) -> None:
    """Read and discard every stream to EOF at once (the taps still see the data).

    ``max_output`` does not apply: nobody receives these bytes. A stream another
    task is waiting on is left to that task.
    """
    live = [s for s in streams if s.fd >= 0 and not s.at_eof and not s._waiting]
    for stream in live:
        stream._limit = None
        stream._exceeded = False
    while live:
        progressed = False
        for stream in list(live):
            for _ in range(_READS_PER_CHECKPOINT):
                data = stream._read_nowait(TRANSIENT_CHUNK)
                if data is None:
                    break
                progressed = True
                if not data:
                    live.remove(stream)
                    break
        if live and not progressed:
            poller = Poller()
            try:
                for stream in live:
                    poller.register(stream.fd)
                await poller.wait()
            finally:
                poller.close()
        elif live:
            await checkpoint()
