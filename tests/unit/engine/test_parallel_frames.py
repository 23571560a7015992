"""Frames decompressed in parallel (:class:`backups.engine.restorer._ParallelFrames`): a multi-frame archive
restores byte-identical trees — whole, as a chain, and partially — through both of its paths (frames of known size
decompressed whole on the pool, large frames streamed chunk by chunk), with only a few frames in flight; a damaged
frame is an IntegrityError naming the archive and leaves nothing restored; a single-frame archive (format 1) still
restores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backups.catalog import Catalog
from backups.engine import restore_frames, restore_plan, restorer, tarstream
from backups.engine.restorer import load_frames, restore
from backups.errors import IntegrityError
from backups.storage import LocalStorage
from tests.helpers import run_backup
from tests.property.tools import APP, SOURCE, as_format_1, files_config, fingerprint

FRAME = 64 << 10  #: small frames, so a small tree has many


def _tree(root: Path) -> None:
    """Small files (text and random) in 8 directories, a few files larger than a frame (random, and all zeros:
    sparse), an empty file, a symlink and a hard link."""
    import random

    rng = random.Random(3)
    for d in range(8):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(50):
            data = rng.randbytes(rng.randint(100, 6000)) if f % 2 else b"line %d\n" % f * rng.randint(1, 300)
            (root / f"d{d}" / f"f{f:02}.dat").write_bytes(data)
    (root / "d3" / "big.bin").write_bytes(rng.randbytes(700 << 10))  # larger than WHOLE_FRAME_MAX below: streamed
    (root / "d5" / "zeros.img").write_bytes(bytes(3 << 20))
    (root / "d6" / "empty").write_bytes(b"")
    os.symlink("../d0/f00.dat", root / "d1" / "link")
    os.link(root / "d2" / "f03.dat", root / "d7" / "hard")


@pytest.fixture
def chain(tmp_path, monkeypatch):
    """A full and an incremental backup of the tree (a few files changed, one added, one removed), frames of 64 KiB;
    the restorer with two frames ahead and frames over 256 KiB streamed."""
    monkeypatch.setattr(tarstream, "FRAME_SIZE", FRAME)
    monkeypatch.setattr(restore_frames, "FRAMES_AHEAD", 2)
    monkeypatch.setattr(restore_frames, "WHOLE_FRAME_MAX", 256 << 10)
    root, repo = tmp_path / "src", tmp_path / "repo"
    _tree(root)
    cfg = files_config(tmp_path, root, repo)
    full, _ = run_backup(cfg, "full", logical_date="2026-01-04T01:00:00Z")
    for d in (1, 4, 6):
        (root / f"d{d}" / "f05.dat").write_bytes(os.urandom(9000))
    (root / "d2" / "new.txt").write_text("new\n" * 5000)
    (root / "d0" / "f07.dat").unlink()
    incr, _ = run_backup(cfg, "inc", logical_date="2026-01-05T01:00:00Z")
    return {"root": root, "repo": repo, "tmp": tmp_path, "full": full.id, "incr": incr.id}


def _archive(env: dict, snap_id: str) -> tuple[Path, dict]:
    cat = Catalog(LocalStorage(env["repo"]), APP)
    rec = cat.get(snap_id).sources[SOURCE]["objects"]["archive"]
    return env["repo"] / rec["key"], rec


def _restore(env: dict, snap_id: str, target: Path, includes: list[str] | None = None) -> Path:
    storage = LocalStorage(env["repo"])
    cat = Catalog(storage, APP)
    restore(storage, cat, cat.get(snap_id), target, includes=includes)
    return target / SOURCE


def _same(got: dict, want: dict) -> None:
    # content, mode and mtime of every entry (directory mtimes included), hard-link groups too
    assert got == want


def _spy(monkeypatch) -> dict[str, int]:
    """Count frames decompressed whole on the pool and frames streamed (the real methods run)."""
    calls = {"whole": 0, "streamed": 0}
    inflate, stream = restorer._ParallelFrames._inflate, restorer._ParallelFrames._stream

    def counted_inflate(self, *a):
        calls["whole"] += 1
        return inflate(self, *a)

    def counted_stream(self, *a):
        calls["streamed"] += 1
        return stream(self, *a)

    monkeypatch.setattr(restorer._ParallelFrames, "_inflate", counted_inflate)
    monkeypatch.setattr(restorer._ParallelFrames, "_stream", counted_stream)
    return calls


@pytest.mark.parametrize("keep", [8192, 5, 0])
def test_multi_frame_chain_restores_byte_identical(chain, monkeypatch, keep):
    """Whatever number of wanted files the first index pass keeps (all; the incremental's few, the full's
    streamed by a pass of its own; none)."""
    monkeypatch.setattr(restore_plan, "KEEP_ENTRIES", keep)
    calls = _spy(monkeypatch)
    frames = load_frames(LocalStorage(chain["repo"]), _archive(chain, chain["full"])[1])
    assert frames is not None and len(frames) >= 12
    before = len(os.listdir("/proc/self/fd"))
    out = _restore(chain, chain["incr"], chain["tmp"] / "out")
    assert len(os.listdir("/proc/self/fd")) == before  # every thread's descriptor closed
    _same(fingerprint(out), fingerprint(chain["root"]))
    assert calls["whole"] >= 10 and calls["streamed"] >= 2  # both paths ran (the big files, the last frames)
    assert os.stat(out / "d5" / "zeros.img").st_blocks * 512 < (3 << 20)  # still sparse


@pytest.mark.parametrize("includes", [["d3/**"], ["d0/f01.dat", "d4/**", "d7/hard"], ["d5/zeros.img", "d6/**"]])
def test_partial_restore_from_parallel_frames_is_byte_identical(chain, includes):
    from backups.commands.restore import include_selector

    selected = include_selector(includes)
    out = _restore(chain, chain["incr"], chain["tmp"] / "part", includes)
    want = {p: v for p, v in fingerprint(chain["root"], dir_times=False).items() if v[0] != "d" and selected(p)}
    got = {p: v for p, v in fingerprint(out, dir_times=False).items() if v[0] != "d"}
    assert want and {p: v[:3] for p, v in got.items()} == {p: v[:3] for p, v in want.items()}


@pytest.mark.parametrize("where", ["header", "payload", "shifted"])
@pytest.mark.parametrize(("member", "partial"), [("d4/", False), ("d4/", True), ("d3/big.bin", False),
                                                 ("d3/big.bin", True)])
def test_damaged_frame_is_an_integrity_error_naming_the_archive(chain, where, member, partial):
    """A frame (of small files, decompressed on the pool; or of a large file, streamed and written on a writer
    thread) whose first bytes (its zstd header) are zeroed, whose middle bytes are flipped, or 100 bytes of whose
    middle moved to its end: an IntegrityError naming the archive object, and nothing left."""
    path, rec = _archive(chain, chain["full"])
    frames = load_frames(LocalStorage(chain["repo"]), rec)
    assert frames is not None
    # the frame holding the member: the last one starting before it (or at it)
    k = max(i for i, f in enumerate(frames) if f.first.split("/") <= member.rstrip("/").split("/"))
    if member.endswith("/"):  # a frame of small files of that directory
        k = next(i for i, f in enumerate(frames) if f.first.startswith(member))
    else:  # a frame of the large file: more than 256 KiB of tar bytes (streamed, written on a writer thread)
        assert frames[k + 1].uoffset - frames[k].uoffset > restore_frames.WHOLE_FRAME_MAX
    f = frames[k]
    data = bytearray(path.read_bytes())
    if where == "header":
        data[f.offset : f.offset + 6] = bytes(6)
    elif where == "payload":
        for i in range(f.offset + f.length // 3, f.offset + f.length // 3 + 64):
            data[i] ^= 0x5A
    else:  # the same size overall: the frame table still parses and points at the same places
        del data[f.offset + f.length // 2 : f.offset + f.length // 2 + 100]
        data[f.offset + f.length - 100 : f.offset + f.length - 100] = bytes(100)
    path.write_bytes(bytes(data))
    target = chain["tmp"] / "out"
    with pytest.raises(IntegrityError) as ei:
        _restore(chain, chain["full"], target, [member.rstrip("/") + ("/**" if member.endswith("/") else "")]
                 if partial else None)
    assert rec["key"] in str(ei.value) and ei.value.exit_code == 4
    assert list(target.iterdir()) == []  # no source, no partial directory


def test_single_frame_archive_still_restores_whole_and_partially(chain):
    """Format 1: one zstd frame, no frame table, no ``frames`` in the record: read as one stream."""
    for snap_id in (chain["full"], chain["incr"]):
        path, _ = _archive(chain, snap_id)
        as_format_1(path, chain["repo"] / "snapshots" / f"{snap_id}.json", SOURCE)
    out = _restore(chain, chain["incr"], chain["tmp"] / "whole")
    _same(fingerprint(out), fingerprint(chain["root"]))
    part = _restore(chain, chain["incr"], chain["tmp"] / "part", ["d3/**"])
    assert sorted(p for p in fingerprint(part) if p.endswith((".dat", ".bin"))) == sorted(
        p for p in fingerprint(chain["root"]) if p.startswith("d3/") and p.endswith((".dat", ".bin")))
