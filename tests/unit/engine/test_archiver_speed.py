"""The per-file fast paths of a backup (issue 18): the ustar header packed in one step, small members handed to
the compressor in batches, include / exclude globs compiled into one regex. Each must give exactly what the
general path gives: the same header bytes, the same archive, the same selection.
"""

from __future__ import annotations

import io
import tarfile

import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from backups.engine import archiver
from backups.engine.archiver import backup_source, ustar_fast
from backups.engine.tarstream import header
from backups.repository.index import iter_index
from backups.sources.files import FilesSource, matcher, matches
from backups.storage.local import LocalStorage

names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=120)
ascii_names = st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=110)


@settings(max_examples=400, deadline=None)
@given(path=st.one_of(ascii_names, names), kind=st.sampled_from("fdlh"), mode=st.integers(0, 0o7777),
       mtime=st.one_of(st.integers(0, 8**11 - 1), st.integers(-5, 8**11 + 5)), size=st.integers(0, 8**11 + 5),
       link=st.one_of(st.just(""), ascii_names, names), uid=st.integers(0, 8**7 + 1), gid=st.integers(0, 8**7 + 1),
       uname=st.one_of(st.just(""), st.just("root"), names), gname=st.one_of(st.just(""), st.just("www-data"), names))
def test_fast_header_is_the_general_header_byte_for_byte(path, kind, mode, mtime, size, link, uid, gid, uname, gname):
    fast = ustar_fast(path, kind, mode, mtime, size, link, uid, gid, uname, gname)
    general = header(path, kind, mode, mtime, size, link, uid=uid, gid=gid, uname=uname, gname=gname)
    if fast is not None:
        assert fast == general
    else:  # only what ustar alone cannot hold goes the general way
        assert len(general) > 512 or not path.isascii() or not link.isascii()


def test_fast_header_covers_the_common_member():
    assert ustar_fast("data/d0001/f0000001.txt", "f", 0o644, 1_700_000_000, 3000, "", 1000, 1000, "app", "app") is not None
    assert ustar_fast("data/d0001", "d", 0o755, 1_700_000_000, 0, "", 0, 0, "root", "root") is not None


def test_small_members_reach_the_compressor_in_batches(tmp_path, monkeypatch):
    """1,000 small files: a handful of compressor calls, not five per file (three for the archive, one each for
    the index and the sums); the archive and the index hold every file."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(1000):
        (tree / f"f{i:04d}.txt").write_bytes(b"%d" % i * (i % 50 + 1))
    calls = []
    real = archiver.compressor

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def write(self, data):
            calls.append(len(data))
            return self.inner.write(data)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

    class Wrapped:
        def __init__(self, threads=-1):
            self.c = real(threads)

        def stream_writer(self, sink, closefd=True):
            return Counting(self.c.stream_writer(sink, closefd=closefd))

    monkeypatch.setattr(archiver, "compressor", Wrapped)
    storage = LocalStorage(tmp_path / "repo")
    rec = backup_source(storage, "s1", FilesSource("files", str(tree), [], []), None, None)
    assert rec["stored_files"] == 1000
    assert 0 < len(calls) <= 10  # the archive, the index and the sums: each a call or two
    # several frames (small members are compressed a frame at a time on a pool): read across them, as zstd -dc does
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(storage.get_bytes(rec["objects"]["archive"]["key"])),
                                                      read_across_frames=True).read()
    assert rec["objects"]["archive"]["frames"] > 1
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        got = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    assert got == {f"f{i:04d}.txt": b"%d" % i * (i % 50 + 1) for i in range(1000)}
    assert [p for p, _ in iter_index(storage, rec["objects"]["index"])] == sorted(got)
    sums = zstandard.ZstdDecompressor().decompressobj().decompress(storage.get_bytes(rec["objects"]["sums"]["key"]))
    assert len(sums.splitlines()) == 1000


@settings(max_examples=300, deadline=None)
@given(path=st.text(st.sampled_from("ab/.*?\\\n"), max_size=12),
       globs=st.lists(st.text(st.sampled_from("ab/*?\\\n"), min_size=1, max_size=8), max_size=4))
def test_compiled_globs_select_what_each_glob_selects(path, globs):
    assert matcher(globs)(path) == matches(path, globs)


def _tree(root, files):
    root.mkdir()
    (root / "sub").mkdir()
    for i in range(files):
        (root / "sub" / f"f{i:03d}").write_bytes(b"%d" % i)
    return root


def test_a_full_backup_reads_each_files_extended_attributes_once(tmp_path, monkeypatch):
    """Once, from the descriptor the bytes are read through (the walk used to read them by path as well)."""
    tree = _tree(tmp_path / "tree", 200)
    calls = []
    real = archiver.os.listxattr

    def counting(target, *a, **kw):
        calls.append(target)
        return real(target, *a, **kw)

    monkeypatch.setattr(archiver.os, "listxattr", counting)
    storage = LocalStorage(tmp_path / "repo")
    rec = backup_source(storage, "s1", FilesSource("files", str(tree), [], []), None, None)
    assert rec["stored_files"] == 200
    assert len(calls) <= 200 + 2 + 1  # each file, each directory, the root's own metadata


def test_extended_attributes_that_cannot_be_read_fail_the_source(tmp_path, monkeypatch):
    """Deferred to the archiver, an unreadable attribute list is still reported, never silently dropped."""
    import errno
    import os
    import stat

    import pytest

    from backups.errors import SourceError

    tree = _tree(tmp_path / "tree", 3)
    real = archiver.os.listxattr

    def failing(target, *a, **kw):
        if stat.S_ISREG((os.fstat(target) if isinstance(target, int) else os.lstat(target)).st_mode):  # the files' lists, not the directories'
            raise OSError(errno.EIO, "Input/output error")
        return real(target, *a, **kw)

    monkeypatch.setattr(archiver.os, "listxattr", failing)
    storage = LocalStorage(tmp_path / "repo")
    with pytest.raises(SourceError, match=r"sub/f000: extended attributes \(Input/output error\)"):
        backup_source(storage, "s1", FilesSource("files", str(tree), [], []), None, None)
    rec = backup_source(storage, "s2", FilesSource("files", str(tree), [], []), None, None, on_unreadable="warn")
    assert rec["stored_files"] == 3 and any("extended attributes" in w for w in rec["warnings"])
