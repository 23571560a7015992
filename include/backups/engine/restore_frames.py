"""Reading an archive's frames: the frame table (:func:`load_frames`), the frames a partial restore needs
(:func:`frame_index_runs`) and their parallel decompression (:class:`_ParallelFrames`). Part of
:mod:`backups.engine.restorer`, which documents the algorithm; the format is in docs/format.md."""

from __future__ import annotations

import io
import logging
import os
from typing import IO, Any, cast

import zstandard

from ..errors import IntegrityError
from ..repository.index import IndexEntry, order_key
from ..storage.base import Storage
from . import tarstream
from .archiver import CHUNK

log = logging.getLogger(__name__)


#: frames decompressed ahead of the tar reader: at most this many in flight (each about FRAME_SIZE of tar bytes,
#: at most WHOLE_FRAME_MAX, or a CHUNK of a streamed frame)
FRAMES_AHEAD = max(4, min(12, 4 * (os.cpu_count() or 1)))
#: threads decompressing frames (zstandard releases the GIL while it decompresses)
DECOMPRESSORS = max(1, min(4, os.cpu_count() or 1))
#: a frame holding more tar bytes than this (a large file), or of unknown size (the archive's last), is streamed
#: chunk by chunk on the reading thread instead of being decompressed whole on the pool: memory stays flat
WHOLE_FRAME_MAX = 4 << 20

_END = object()


def _frame_span(frames: list[tarstream.Frame], i: int) -> int | None:
    """The tar bytes frame ``i`` holds (from the next frame's uncompressed offset), None for the last frame."""
    return frames[i + 1].uoffset - frames[i].uoffset if i + 1 < len(frames) else None


class _ParallelFrames:
    """The tar bytes of some frames of one archive, in order (a file-like ``read``), decompressed ahead of the
    reader on a small thread pool.

    One reading thread reads each run of consecutive frames with one ranged read (a whole restore: one run, the
    whole archive) and hands every frame of known size up to :data:`WHOLE_FRAME_MAX` to the pool; larger frames
    (a large file) it decompresses itself, chunk by chunk. At most :data:`FRAMES_AHEAD` frames or chunks wait for
    the reader (bounded memory: a few frames). Frames start at member boundaries, so the frames put end to end are
    a tar stream; when the last run does not end the archive, an end-of-archive marker is added. A frame whose
    size does not match the frame table, or that does not decompress, is an IntegrityError naming the object."""

    def __init__(self, storage: Storage, key: str, frames: list[tarstream.Frame], runs: list[list[int]]) -> None:
        import queue
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.storage, self.key, self.frames = storage, key, frames
        self.ended = bool(runs) and runs[-1][-1] == len(frames) - 1
        self._q: queue.Queue[Any] = queue.Queue(maxsize=FRAMES_AHEAD)
        self._stop = threading.Event()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=DECOMPRESSORS, thread_name_prefix="restore-zstd")
        self._buf, self._off, self._done = b"", 0, False
        self._t = threading.Thread(target=self._feed, args=(runs,), name="restore-read", daemon=True)
        self._t.start()

    # ---- the reading thread
    def _put(self, item: Any) -> bool:
        # a plain blocking put (no timeout: a timed wait has an absolute deadline, which a wall clock set far ahead,
        # e.g. under faketime, turns into decades); close() drains the queue, so it always returns
        if self._stop.is_set():
            return False
        self._q.put(item)
        return not self._stop.is_set()

    def _feed(self, runs: list[list[int]]) -> None:
        try:
            for run in runs:
                first, last = self.frames[run[0]], self.frames[run[-1]]
                with self.storage.open_read(self.key, first.offset, last.offset + last.length - first.offset) as raw:
                    for i in run:
                        f, span = self.frames[i], _frame_span(self.frames, i)
                        if span is not None and span <= WHOLE_FRAME_MAX and f.length <= WHOLE_FRAME_MAX:
                            comp = self._read_exact(raw, f.length, i)
                            if not self._put(self._pool.submit(self._inflate, comp, span, i)):
                                return
                        elif not self._stream(raw, i, span):
                            return
            self._put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            self._put(exc)

    def _read_exact(self, raw: Any, n: int, i: int) -> bytes:
        parts, left = [], n
        while left:
            b = raw.read(min(left, CHUNK * 4))
            if not b:
                raise self._bad(i, "ends early")
            parts.append(b)
            left -= len(b)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _stream(self, raw: Any, i: int, span: int | None) -> bool:
        """Decompress a large frame here, chunk by chunk, into the queue (the pool's frames before it are queued)."""
        from ..storage.util import LimitedReader

        limited = LimitedReader(raw, self.frames[i].length)
        n = 0
        with zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], limited), read_size=CHUNK, closefd=False,
                                                        read_across_frames=True) as z:
            while chunk := z.read(CHUNK):
                n += len(chunk)
                if span is not None and n > span:
                    raise self._bad(i, f"holds more than the {span} bytes of its frame table entry")
                if not self._put(chunk):
                    return False
        if limited.left or (span is not None and n != span):
            raise self._bad(i, "does not match its frame table entry")
        return True

    # ---- the pool
    def _inflate(self, comp: bytes, span: int, i: int) -> bytes:
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        try:
            # a row of the frame table may hold several zstd frames (a PostgreSQL table file is stored as its
            # header, data and padding, each its own frame): read across them, never past the row's size
            with dctx.stream_reader(io.BytesIO(comp), read_across_frames=True) as z:
                out = z.read(span + 1)
                while len(out) <= span and (more := z.read(span + 1 - len(out))):
                    out += more
        except zstandard.ZstdError as exc:
            raise self._bad(i, f"cannot be decompressed ({exc})") from None
        if len(out) != span:
            raise self._bad(i, f"holds {len(out)} bytes, its frame table entry {span}")
        return out

    def _bad(self, i: int, what: str) -> IntegrityError:
        return IntegrityError(f"{self.storage.name}: archive {self.key} is damaged: frame {i} (at byte "
                              f"{self.frames[i].offset}) {what}",
                              hint="restore from another storage; run `backupctl verify --read-data`")

    # ---- the tar reader's side
    def _next(self) -> bool:
        if self._done:
            return False
        item = self._q.get()
        if item is _END:
            self._done = True
            if self.ended:
                return False
            item = tarstream.end_of_archive()
        elif isinstance(item, BaseException):
            self._done = True
            raise item
        elif not isinstance(item, bytes):
            item = item.result()
        self._buf, self._off = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        while self._off >= len(self._buf):
            if not self._next():
                return b""
        if n is None or n < 0:
            n = len(self._buf) - self._off
        end = self._off + n
        data = self._buf[self._off : end] if (self._off or end < len(self._buf)) else self._buf
        self._off = min(end, len(self._buf))
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Stop the reading thread (it may wait on a full queue), cancel queued frames, wait for both."""
        import queue
        import time

        self._stop.set()
        while self._t.is_alive():
            try:
                self._q.get_nowait()  # makes room: a put the reading thread waits in returns, then it sees the stop
            except queue.Empty:
                time.sleep(0.005)
        self._t.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._buf = b""


def load_frames(storage: Storage, obj: dict[str, Any]) -> list[tarstream.Frame] | None:
    """The frame table of an archive object (two ranged reads at its end), or None when it has none (an archive
    written before format 2) or it is unusable (then the archive is read whole, as one stream: safe, only slower)."""
    if not isinstance(obj.get("frames"), int) or obj["frames"] < 1 or not isinstance(obj.get("size"), int):
        return None
    size = obj["size"]
    try:
        with storage.open_read(obj["key"], max(0, size - tarstream.tail_length()), tarstream.tail_length()) as fh:
            off, length = tarstream.table_span(fh.read(), size)
        with storage.open_read(obj["key"], off, length) as fh:
            return tarstream.parse_frame_table(fh.read(), size)
    except tarstream.FrameTableError as exc:
        log.warning("%s: archive %s: %s; reading it whole", storage.name, obj["key"], exc)
        return None


def frame_runs(frames: list[tarstream.Frame], wanted: list[tuple[str, str, IndexEntry]]) -> list[tuple[int, int, bool]]:
    """The ranges of the archive (compressed offset, length, whether it reaches the last frame) holding the
    members ``wanted`` names: for each, the frames from the last one starting before it (or at it) to the last
    one starting at it (a torn file's second copy may start the next frame); adjacent frames are merged."""
    return [_run(frames, run[0], run[-1]) for run in frame_index_runs(frames, wanted)]


def frame_index_runs(frames: list[tarstream.Frame], wanted: list[tuple[str, str, IndexEntry]]) -> list[list[int]]:
    """:func:`frame_runs` as lists of consecutive frame numbers."""
    import bisect

    keys = [order_key(f.first) for f in frames]
    need: set[int] = set()
    for path, _, e in wanted:
        k = order_key(path)
        lo = bisect.bisect_left(keys, k)
        first = lo if lo < len(keys) and keys[lo] == k and not e.torn else max(0, lo - 1)
        last = max(first, bisect.bisect_right(keys, k) - 1)
        need.update(range(first, last + 1))
    runs: list[list[int]] = []
    for i in sorted(need):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _run(frames: list[tarstream.Frame], a: int, b: int) -> tuple[int, int, bool]:
    return frames[a].offset, frames[b].offset + frames[b].length - frames[a].offset, b == len(frames) - 1
