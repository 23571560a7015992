"""The tar stream (engine/tarstream.py): headers written by ``header`` read back by ``iter_members``, by Python's
``tarfile`` and by GNU tar (the restore-by-hand path), and archives written by ``tarfile`` read by ``iter_members``.

Table-driven and in memory: no Airflow, no storage, milliseconds.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

import pytest

from backups.engine.tarstream import BLOCK, TarFormatError, end_of_archive, header, iter_members, padding

MIB = 1 << 20

# (path, kind, mode, mtime, content for "f" / link target for "l")
MEMBERS = [
    ("empty.txt", "f", 0o644, 1_700_000_000, b""),
    ("one", "f", 0o600, 1, b"x"),
    ("block-1", "f", 0o644, 1_700_000_001, b"a" * (BLOCK - 1)),
    ("block", "f", 0o644, 1_700_000_002, b"b" * BLOCK),
    ("block+1", "f", 0o755, 1_700_000_003, b"c" * (BLOCK + 1)),
    ("big/over-a-chunk.bin", "f", 0o640, 1_700_000_004, bytes(range(256)) * (MIB // 256) + b"tail"),
    ("config", "d", 0o755, 1_700_000_005, b""),
    ("config/current", "l", 0o777, 1_700_000_006, "fleet.yaml"),
    ("n" * 100, "f", 0o644, 0, b"exactly 100 characters: fits ustar's name field"),
    ("deep/" * 20 + "file", "f", 0o644, 1_700_000_007, b"ustar prefix + name"),
    ("flat-" + "y" * 150, "f", 0o644, 1_700_000_008, b"no slash to split: pax path"),
    ("données/émission-ü.json", "f", 0o644, 1_700_000_009, "non-ASCII name and content: é ü".encode()),
    ("links/far", "l", 0o777, 1_700_000_010, "t" * 150),
    ("setuid-bit", "f", 0o4755, 1_700_000_011, b"mode keeps the special bits below 0o7777"),
    ("year-2400", "f", 0o644, 13_569_465_600, b"mtime needs more than 11 octal digits: pax"),
]
IDS = [m[0][:24] for m in MEMBERS]


def _archive(members=MEMBERS) -> bytes:
    out = io.BytesIO()
    for path, kind, mode, mtime, data in members:
        if kind == "f":
            out.write(header(path, kind, mode, mtime, len(data)) + data + padding(len(data)))
        elif kind == "l":
            out.write(header(path, kind, mode, mtime, link=data))
        else:
            out.write(header(path, kind, mode, mtime))
    out.write(end_of_archive())
    return out.getvalue()


class Trickle(io.RawIOBase):
    """A stream that returns at most ``n`` bytes a read, like a socket or a decompressor."""

    def __init__(self, data: bytes, n: int) -> None:
        self.buf, self.n = io.BytesIO(data), n

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.buf.read(self.n if size < 0 else min(size, self.n))


@pytest.mark.parametrize("size,pad", [(0, 0), (1, 511), (511, 1), (512, 0), (513, 511), (MIB, 0), (MIB + 7, 505)])
def test_padding_completes_the_block(size, pad):
    assert len(padding(size)) == pad and (size + pad) % BLOCK == 0 and set(padding(size)) <= {0}


@pytest.mark.parametrize("member", MEMBERS, ids=IDS)
@pytest.mark.parametrize("reader", ["whole", "trickle"])
def test_round_trip_through_iter_members(member, reader):
    path, kind, mode, mtime, data = member
    raw = _archive([member])
    assert len(raw) % BLOCK == 0
    src = io.BytesIO(raw) if reader == "whole" else Trickle(raw, 97)
    got = [(m, r.read_all()) for m, r in iter_members(src, chunk=4096)]
    assert len(got) == 1
    m, body = got[0]
    assert m.name.rstrip("/") == path and m.mode == mode and m.mtime == mtime
    assert (m.isfile(), m.isdir(), m.issym()) == (kind == "f", kind == "d", kind == "l")
    if kind == "f":
        assert m.size == len(data) and body == data
    elif kind == "l":
        assert m.linkname == data and body == b""


def test_whole_archive_round_trip_and_unread_members_are_skipped():
    raw = _archive()
    names = []
    for i, (m, r) in enumerate(iter_members(io.BytesIO(raw), chunk=1000)):
        names.append(m.name.rstrip("/"))
        if i % 2:  # read only every other member: the iterator must skip the rest exactly
            assert r.read_all() == (MEMBERS[i][4] if MEMBERS[i][1] == "f" else b"")
    assert names == [p for p, *_ in MEMBERS]


def test_python_tarfile_reads_what_header_writes():
    with tarfile.open(fileobj=io.BytesIO(_archive()), mode="r:") as tf:
        infos = tf.getmembers()
        assert [i.name for i in infos] == [p for p, *_ in MEMBERS]
        for info, (_path, kind, mode, mtime, data) in zip(infos, MEMBERS, strict=True):
            assert (info.mode, info.mtime) == (mode, mtime)
            if kind == "f":
                assert tf.extractfile(info).read() == data
            elif kind == "l":
                assert info.issym() and info.linkname == data
            else:
                assert info.isdir()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
def test_iter_members_reads_what_tarfile_writes(fmt):
    members = [m for m in MEMBERS if fmt != tarfile.USTAR_FORMAT or len(m[0]) <= 100 and m[0].isascii()
               and (m[1] != "l" or len(m[4]) <= 100) and m[3] < 8**11]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for path, kind, mode, mtime, data in members:
            ti = tarfile.TarInfo(path)
            ti.mode, ti.mtime = mode, mtime
            ti.type = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE}[kind]
            if kind == "f":
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                ti.linkname = data if kind == "l" else ""
                tf.addfile(ti)
    got = [(m.name.rstrip("/"), m.mode, m.mtime, m.linkname, r.read_all()) for m, r in iter_members(io.BytesIO(buf.getvalue()))]
    want = [(p, mode, mtime, data if k == "l" else "", data if k == "f" else b"") for p, k, mode, mtime, data in members]
    assert got == want


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
def test_gnu_tar_extracts_what_header_writes(tmp_path):
    proc = subprocess.run(["tar", "-x", "-f", "-", "-C", str(tmp_path)], input=_archive(), capture_output=True)
    assert proc.returncode == 0, proc.stderr
    for path, kind, _mode, _mtime, data in MEMBERS:
        p = tmp_path / path
        if kind == "f":
            assert p.read_bytes() == data, path
        elif kind == "l":
            assert p.is_symlink() and str(p.readlink()) == data
        else:
            assert p.is_dir()


@pytest.mark.parametrize("damage,message", [
    (lambda raw: raw[:10] + b"X" + raw[11:], "bad header checksum"),            # a name byte changed
    (lambda raw: raw[: BLOCK + 100], "unexpected end of archive"),               # cut inside the data
    (lambda raw: raw[:-2 * BLOCK], "end-of-archive"),                            # no end marker
])
def test_damaged_streams_are_refused(damage, message):
    raw = damage(_archive(MEMBERS[4:5]))  # one 513-byte file: header + 2 data blocks + end marker
    with pytest.raises(TarFormatError, match=message):
        for _m, r in iter_members(io.BytesIO(raw)):
            r.read_all()


def test_header_is_one_block_for_plain_names_and_pax_only_when_needed():
    assert len(header("a/b.txt", "f", 0o644, 1, 3)) == BLOCK
    assert len(header("deep/" * 20 + "file", "f", 0o644, 1, 3)) == BLOCK  # ustar prefix, no pax
    for path in ("flat-" + "y" * 150, "données.json"):
        raw = header(path, "f", 0o644, 1, 3)
        assert len(raw) > BLOCK and raw[156:157] == b"x"  # a pax extended header first


def test_owner_and_pax_metadata_records_are_read_by_tarfile_gnu_tar_and_iter_members(tmp_path):
    """Owners in the ustar fields (pax records when they do not fit), extended attributes as raw pax values —
    binary, with newlines and '=' — and a non-UTF-8 attribute name: every reader gets them back unchanged."""
    value = bytes(range(256)) + b"\n=x"
    odd = "user." + os.fsdecode(b"\xff-name")
    members = [
        header("plain", "f", 0o640, 1_700_000_000, 2, uid=1000, gid=1001, uname="app", gname="app") + b"ok" + padding(2),
        header("big-ids", "f", 0o600, 1_700_000_000, 1, uid=3_000_000, gid=2**32 - 2, uname="ü" * 40, gname="g")
        + b"b" + padding(1),
        header("attrs", "d", 0o750, 1_700_000_000, pax={"SCHILY.xattr.user.bin": value, f"SCHILY.xattr.{odd}": b"v",
                                                       "SCHILY.acl.access": b"user::rwx\ngroup::r-x\nother::---\n"}),
    ]
    data = b"".join(members) + end_of_archive()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        got = {m.name: m for m in tf}
    assert (got["plain"].uid, got["plain"].gid, got["plain"].uname, got["plain"].gname) == (1000, 1001, "app", "app")
    assert (got["big-ids"].uid, got["big-ids"].gid, got["big-ids"].uname) == (3_000_000, 2**32 - 2, "ü" * 40)
    assert got["attrs"].pax_headers["SCHILY.xattr.user.bin"].encode("utf-8", "surrogateescape") == value
    seen = [(m.name, r.read_all()) for m, r in iter_members(io.BytesIO(data))]
    assert seen == [("plain", b"ok"), ("big-ids", b"b"), ("attrs/", b"")]
    if shutil.which("tar"):
        (tmp_path / "a.tar").write_bytes(data)
        listing = subprocess.run(["tar", "--numeric-owner", "-tvf", str(tmp_path / "a.tar")], capture_output=True, text=True)
        assert listing.returncode == 0, listing.stderr
        assert "1000/1001" in listing.stdout and "3000000/4294967294" in listing.stdout
