"""Tar member headers of the archiver: the ustar fast path for the common member, :mod:`tarstream` otherwise.

Split out of :mod:`backups.engine.archiver` (issue 17: module size); the archiver re-exports these names.
"""

from __future__ import annotations

from functools import lru_cache

from ..sources.base import Entry
from ..sources.fsmeta import narrowed_mode, pax_records
from . import tarstream

_USTAR_KIND = dict(tarstream.TYPES)
_NUL100 = bytes(100)
_USTAR_TAIL = b"0000000\x000000000\x00" + bytes(167)  # devmajor, devminor, an empty prefix and the block's padding


@lru_cache(maxsize=256)
def owner_fields(uname: str, gname: str) -> tuple[bytes, int] | None:
    """``magic version uname gname`` of a ustar header (72 bytes) and the sum of their bytes and of the
    constant tail's (for the checksum), or None when a name needs a pax record."""
    bu, bg = uname.encode("utf-8", "surrogateescape"), gname.encode("utf-8", "surrogateescape")
    if len(bu) > 31 or len(bg) > 31 or not bu.isascii() or not bg.isascii():
        return None
    fields = b"ustar\x0000" + bu.ljust(32, b"\x00") + bg.ljust(32, b"\x00")
    return fields, sum(fields) + sum(_USTAR_TAIL)


def ustar_fast(path: str, kind: str, mode: int, mtime: int, size: int, link: str, uid: int, gid: int,
                uname: str, gname: str) -> bytes | None:
    """The header :func:`tarstream.header` writes when ustar alone holds every value (an ASCII name and link
    of at most 100 bytes, no pax record, values in range), packed in a few C-level operations; None otherwise.

    This is the header of nearly every member of a tree of small files, where packing it field by field cost
    about a tenth of the backup's time. tests/unit/engine/test_archiver_speed.py checks it byte for byte."""
    if not (path.isascii() and link.isascii() and 0 <= mtime < 8**11 and 0 <= uid < 8**7 and 0 <= gid < 8**7
            and size < 8**11):
        return None
    name = (path + "/" if kind == "d" else path).encode("ascii")
    blink = link.encode("ascii")
    owner = owner_fields(uname, gname)
    if len(name) > 100 or len(blink) > 100 or owner is None:
        return None
    numbers = b"%07o\x00%07o\x00%07o\x00%011o\x00%011o\x00" % (mode & 0o7777, uid, gid, size, mtime)
    tag = _USTAR_KIND[kind]
    checksum = sum(name) + sum(numbers) + 8 * 32 + tag[0] + sum(blink) + owner[1]  # the field itself counts as spaces
    return b"".join((name, _NUL100[len(name):], numbers, b"%06o\x00 " % checksum, tag, blink, _NUL100[len(blink):],
                     owner[0], _USTAR_TAIL))


def tarinfo(e: Entry, size: int, kind: str | None = None, link: str | None = None) -> bytes:
    """The member header of ``e``: owner in the ustar fields, extended attributes and ACLs as pax records, and a
    mode never wider than the source's for a reader that ignores ACLs (see :mod:`backups.sources.fsmeta`)."""
    uid, gid, uname, gname = e.owner or (0, 0, "", "")
    if not e.xattrs:
        fast = ustar_fast(e.path, kind or e.type, e.mode, e.mtime_ns // 1_000_000_000, size,
                           (e.link if link is None else link) or "", uid, gid, uname, gname)
        if fast is not None:
            return fast
    return tarstream.header(e.path, kind or e.type, narrowed_mode(e.mode, e.xattrs), e.mtime_ns // 1_000_000_000,
                            size, (e.link if link is None else link) or "", uid=uid, gid=gid, uname=uname,
                            gname=gname, pax=pax_records(e.xattrs) if e.xattrs else None)
