"""Minimal, fast POSIX tar (ustar + pax) header writing and streaming reading.

Python's ``tarfile`` is general but slow on a stream of many small members (pax checks and 10 KB reads per
call). Backups write members whose metadata we fully control, so headers are packed directly as ustar,
preceded by a pax extended header only for what ustar cannot hold (long or non-ASCII names, large values) and
for metadata records (extended attributes, ACLs). Reading parses ustar, GNU long-name and pax
extended headers — everything GNU tar or ``tarfile`` may produce for regular files, directories and links —
and hands each member's bytes to the caller as a bounded stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 512
_ZERO = bytes(BLOCK)
TYPES = {"f": b"0", "d": b"5", "l": b"2", "h": b"1"}  # h: hard link to ``link`` (an earlier member)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, value)


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One pax record: ``<length> <key>=<value>\n``, the length counting its own digits."""
    body = len(key) + len(value) + 3  # " ", "=", "\n"
    n = len(str(body))
    while len(str(body + n)) > n:
        n += 1
    return b"%d %s=%s\n" % (body + n, key, value)


def _ustar(bname: bytes, prefix: bytes, kind: bytes, mode: int, mtime: int, size: int, blink: bytes,
           uid: int, gid: int, uname: bytes, gname: bytes) -> bytes:
    buf = bytearray(BLOCK)
    buf[0 : len(bname)] = bname
    buf[100:108] = _octal(mode & 0o7777, 8)
    buf[108:116] = _octal(uid, 8)
    buf[116:124] = _octal(gid, 8)
    buf[124:136] = _octal(size, 12)
    buf[136:148] = _octal(mtime, 12)
    buf[148:156] = b" " * 8
    buf[156:157] = kind
    buf[157 : 157 + len(blink)] = blink
    buf[257:265] = b"ustar\x0000"
    buf[265 : 265 + len(uname)] = uname
    buf[297 : 297 + len(gname)] = gname
    buf[329:337] = _octal(0, 8)
    buf[337:345] = _octal(0, 8)
    buf[345 : 345 + len(prefix)] = prefix
    buf[148:156] = b"%06o\x00 " % sum(buf)
    return bytes(buf)


def _fits(text: bytes, width: int) -> bool:
    return len(text) <= width and text.isascii()


def header(path: str, kind: str, mode: int, mtime: int, size: int = 0, link: str = "", *, uid: int = 0, gid: int = 0,
           uname: str = "", gname: str = "", pax: dict[str, bytes] | None = None) -> bytes:
    """A 512-byte ustar header, preceded by a pax extended header (type ``x``) when ustar cannot hold a value
    (long or non-ASCII names, large sizes, times or ids) or when ``pax`` records are given (e.g.
    ``SCHILY.xattr.user.x``, ``SCHILY.acl.access``: values are raw bytes, as GNU tar writes them)."""
    recs: dict[bytes, bytes] = {k.encode("utf-8", "surrogateescape"): v for k, v in (pax or {}).items()}
    name = path + "/" if kind == "d" else path
    bname = name.encode("utf-8", "surrogateescape")
    blink = link.encode("utf-8", "surrogateescape")
    prefix = b""
    if not bname.isascii() or len(bname) > 100:
        cut = bname.rfind(b"/", 0, 156)
        if bname.isascii() and 0 < cut and 0 < len(bname) - cut - 1 <= 100:
            prefix, bname = bname[:cut], bname[cut + 1 :]
        else:
            recs[b"path"] = bname
            bname = bytes(c if 32 <= c < 127 else 95 for c in bname[:100])  # a fallback for readers without pax
    if not _fits(blink, 100):
        recs[b"linkpath"], blink = blink, b""
    if size >= 8**11:
        recs[b"size"] = b"%d" % size
    if mtime >= 8**11 or mtime < 0:
        recs[b"mtime"], mtime = b"%d" % mtime, 0
    if uid >= 8**7 or uid < 0:
        recs[b"uid"], uid = b"%d" % uid, 0
    if gid >= 8**7 or gid < 0:
        recs[b"gid"], gid = b"%d" % gid, 0
    bu, bg = uname.encode("utf-8", "surrogateescape"), gname.encode("utf-8", "surrogateescape")
    if not _fits(bu, 31):
        recs[b"uname"], bu = bu, b""
    if not _fits(bg, 31):
        recs[b"gname"], bg = bg, b""
    main = _ustar(bname, prefix, TYPES[kind], mode, mtime, 0 if b"size" in recs else size, blink, uid, gid, bu, bg)
    if not recs:
        return main
    data = b"".join(_pax_record(k, v) for k, v in recs.items())
    xname = (b"PaxHeaders/" + bname)[:100]
    return _ustar(xname, b"", b"x", 0o644, 0 if mtime < 0 else mtime, len(data), b"", 0, 0, b"", b"") + data + padding(len(data)) + main


def padding(size: int) -> bytes:
    return _ZERO[: -size % BLOCK] if size % BLOCK else b""


def end_of_archive() -> bytes:
    return _ZERO * 2


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class Member:
    name: str
    type: bytes  #: b"0" file, b"5" directory, b"2" symlink, b"1" hard link, ...
    mode: int
    size: int
    mtime: int
    linkname: str

    def isfile(self) -> bool:
        return self.type in (b"0", b"\x00", b"7")

    def isdir(self) -> bool:
        return self.type == b"5"

    def issym(self) -> bool:
        return self.type == b"2"

    def islnk(self) -> bool:
        return self.type == b"1"


class TarFormatError(Exception):
    pass


def _read_exact(src: BinaryIO, n: int) -> bytes:
    parts, left = [], n
    while left:
        b = src.read(left)
        if not b:
            raise TarFormatError(f"unexpected end of archive ({n - left} of {n} bytes)")
        parts.append(b)
        left -= len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _num(field: bytes) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU) for large values
        return int.from_bytes(field[1:], "big")
    s = field.split(b"\x00", 1)[0].strip()
    return int(s, 8) if s else 0


def _str(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        length = int(data[pos:sp])
        rec = data[sp + 1 : pos + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


class MemberReader:
    """The bytes of one member; must be read to the end (or skipped) before the next member."""

    def __init__(self, src: BinaryIO, size: int) -> None:
        self.src, self.left = src, size

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (fewer at a chunk boundary; ``b""`` at the member's end)."""
        if self.left <= 0:
            return b""
        n = self.left if n < 0 else min(n, self.left)
        b = self.src.read(n)
        if not b:
            raise TarFormatError("unexpected end of archive inside a member")
        self.left -= len(b)
        return b

    def read_all(self) -> bytes:
        """Every remaining byte of the member."""
        parts = []
        while chunk := self.read():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def iter_members(src: BinaryIO, chunk: int = 1 << 20) -> Iterator[tuple[Member, MemberReader]]:
    """Yield (member, reader) for each member of a tar stream; skips what the caller left unread."""
    pax: dict[str, str] = {}
    longname: str | None = None
    longlink: str | None = None
    while True:
        block = src.read(BLOCK)
        if len(block) < BLOCK:
            block += _read_exact(src, BLOCK - len(block)) if block else b""
            if not block:
                raise TarFormatError("archive ends without an end-of-archive marker")
        if block == _ZERO:
            return
        chk = _num(block[148:156])
        if chk != sum(block[:148]) + 256 + sum(block[156:]):
            raise TarFormatError("bad header checksum")
        typ = block[156:157]
        size = _num(block[124:136])
        if typ in (b"x", b"g", b"L", b"K"):
            data = _read_exact(src, size + (-size % BLOCK))[:size]
            if typ == b"x":
                pax.update(_parse_pax(data))
            elif typ == b"L":
                longname = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
            elif typ == b"K":
                longlink = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
            continue
        name = _str(block[0:100])
        if block[257:262] == b"ustar":
            prefix = _str(block[345:500])
            if prefix:
                name = f"{prefix}/{name}"
        name = pax.pop("path", "") or longname or name
        link = pax.pop("linkpath", "") or longlink or _str(block[157:257])
        if "size" in pax:
            size = int(pax.pop("size"))
        mtime = int(float(pax.pop("mtime", _num(block[136:148]))))
        pax, longname, longlink = {}, None, None
        m = Member(name, typ, _num(block[100:108]), size if typ in (b"0", b"\x00", b"7") else 0, mtime, link)
        reader = MemberReader(src, m.size)
        yield m, reader
        while reader.read(chunk):
            pass
        pad = -m.size % BLOCK
        if pad:
            _read_exact(src, pad)


# ------------------------------------------------------------------------------------------------ frame table
#: archives are cut into independent zstd frames at the first member boundary after this many uncompressed bytes
FRAME_SIZE = 256 << 10
_SKIPPABLE = 0x184D2A5B  #: a zstd skippable frame (magic 0x184D2A50-5F): ``zstd -dc`` passes over it
_TAIL = b"BKFT"  #: the last 4 bytes of a seekable archive


@dataclass(frozen=True)
class Frame:
    """One zstd frame of an archive: where its compressed bytes are, where its tar bytes start, its first member."""

    offset: int  #: compressed offset of the frame in the object
    length: int  #: compressed length
    uoffset: int  #: uncompressed (tar) offset of its first byte
    first: str  #: name of the first member that starts in it (frames start at member boundaries)


def frame_table(frames: list[Frame]) -> bytes:
    """The frame table as a zstd skippable frame, to append after the last data frame (docs/format.md)."""
    import json
    import struct

    import zstandard

    body = zstandard.ZstdCompressor(level=3).compress(
        json.dumps([[f.offset, f.length, f.uoffset, f.first] for f in frames], ensure_ascii=False,
                   separators=(",", ":")).encode("utf-8", "surrogateescape"))
    payload = body + struct.pack("<I", len(body)) + _TAIL
    return struct.pack("<II", _SKIPPABLE, len(payload)) + payload


class FrameTableError(Exception):
    """The frame table is absent, damaged or inconsistent (readers then read the archive as one stream)."""


def tail_length() -> int:
    """How many bytes at the end of an archive hold the table's length and marker."""
    return 8


def table_span(tail: bytes, size: int) -> tuple[int, int]:
    """(offset, length) of the whole skippable frame holding the table, from the archive's last 8 bytes."""
    import struct

    if len(tail) != 8 or tail[4:] != _TAIL:
        raise FrameTableError("no frame table at the end of the archive")
    n = struct.unpack("<I", tail[:4])[0]
    length = 8 + n + 8
    if length > size or n > 64 << 20:
        raise FrameTableError("frame table length is past the start of the archive")
    return size - length, length


def parse_frame_table(data: bytes, size: int) -> list[Frame]:
    """The frames described by the skippable frame ``data`` (which ends the archive of ``size`` bytes), validated:
    non-empty, contiguous from offset 0 up to the table, uncompressed offsets increasing from 0, first member
    names valid UTF-8 strings in canonical order. Anything else is a :class:`FrameTableError`."""
    import json
    import struct

    import zstandard

    try:
        magic, n = struct.unpack_from("<II", data)
        if magic != _SKIPPABLE or n != len(data) - 8 or data[-4:] != _TAIL:
            raise FrameTableError("frame table header does not match")
        blen = struct.unpack_from("<I", data, len(data) - 8)[0]
        if blen != n - 8:
            raise FrameTableError("frame table length does not match")
        rows = json.loads(zstandard.ZstdDecompressor().decompress(data[8 : 8 + blen], max_output_size=256 << 20))
        frames = [Frame(int(r[0]), int(r[1]), int(r[2]), r[3]) for r in rows]
    except (ValueError, TypeError, IndexError, KeyError, struct.error, zstandard.ZstdError) as exc:
        raise FrameTableError(f"frame table is damaged ({exc.__class__.__name__})") from None
    end = size - len(data)
    if not frames:
        raise FrameTableError("frame table is empty")
    pos = upos = 0
    last: list[str] | None = None
    for i, f in enumerate(frames):
        if (type(f.offset) is not int or f.offset != pos or f.length <= 0 or not isinstance(f.first, str)
                or (i and f.uoffset <= upos) or (not i and f.uoffset != 0)):
            raise FrameTableError(f"frame {i} overlaps, leaves a gap or goes backwards")
        key = f.first.split("/")
        if last is not None and key < last:
            raise FrameTableError(f"frame {i} starts out of canonical order")
        last, pos, upos = key, f.offset + f.length, f.uoffset
    if pos != end:
        raise FrameTableError("frames do not end where the frame table starts (offsets past the end, or a gap)")
    return frames
