"""Restore a snapshot (its whole chain) into a target directory, verifying every file.

Algorithm (kopia's restore shape: the restorer resolves and streams, the target only receives):

1. Resolve the chain (full → … → the snapshot) from the manifests; every manifest is checksum-verified and its
   source names checked against the configuration's safe-name rule.
2. For each selected source, load the snapshot's index — the complete state — and keep the entries that match
   ``--include`` globs. Each entry names the snapshot whose archive holds its bytes (``in``). Every index path
   is validated as it is read (no absolute path, no ``.``/``..``/empty component, no duplicate, nothing below a
   non-directory, hard links only to such paths): see :func:`~backups.repository.index.iter_index`.
3. Read each needed archive once, oldest first, as a stream (zstd → tar): its zstd frames decompressed in
   parallel, a few ahead of the tar reader (:class:`_ParallelFrames`; an archive without a frame table, format 1,
   is one stream); with ``--include`` globs (a partial restore), only the frames that hold wanted members, found
   with the archive's frame table (:func:`load_frames`, :func:`frame_runs`; docs/format.md) and read with ranged
   reads. Every member name is checked
   (absolute paths, ``..``, duplicates and members below a symlink of the same archive are refused), but only
   members whose names equal a wanted index path are written — members of older archives below a path whose
   type changed since are simply not wanted. Files go to a private ``.<source>.partial-*`` directory, each
   hashed once, on the bytes written, and compared with the index (small files on a small pool of writer
   threads, large ones streamed by the reading thread).
   A large file that shrank while it was backed up (``torn``) may have two members: the one matching the index
   is kept.
4. Every file gets its owner (as root, unless ``no_owner``), mode, extended attributes / ACLs and times
   (:func:`backups.sources.fsmeta.apply`). Hard links are linked once their files are written; symlinks are
   created last; then directory metadata, deepest first, and the source root's own (``details.root``). Every
   entry is created through directory descriptors opened one component at a time with ``O_NOFOLLOW``
   (:class:`_Tree`), so nothing is ever created or written through a symlink, whatever the repository says,
   and paths longer than PATH_MAX work. Only ``user.*`` attributes and ACLs are ever set.
5. Only when every wanted file was found and matched is the partial directory renamed to ``<target>/<source>``.
   Any failure removes it: a restore either completes or leaves nothing that looks complete. ``--force`` also
   removes the partial directories of a killed restore of that source. The warnings the chain's snapshots
   recorded for the source come back with the result (and go into the report).

The work is split by concern: :mod:`.restore_plan` (selection, target checks, the first pass over the index),
:mod:`.restore_frames` (frame table, parallel frame decompression), :mod:`.restore_write` (directory
descriptors, metadata, writer threads); this module merges archives with the index and puts it together. Their
public names stay importable from here."""


from __future__ import annotations

import functools
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import zstandard

from ..catalog.manifest import Catalog, Snapshot
from ..errors import ConfigError, IntegrityError, NotFoundError, RefusedError
from ..repository.index import IndexEntry, iter_index, order_key
from ..sources import fsmeta
from ..storage.base import Storage
from ..storage.util import PrefetchReader
from . import tarstream
from .archiver import CHUNK
from .progress import Progress
from .restore_frames import (  # noqa: F401 - re-exported: the restorer's public names stay importable from here
    DECOMPRESSORS,
    FRAMES_AHEAD,
    WHOLE_FRAME_MAX,
    _ParallelFrames,
    frame_index_runs,
    frame_runs,
    load_frames,
)
from .restore_plan import (  # noqa: F401 - re-exported
    KEEP_ENTRIES,
    Plan,
    SourceRestore,
    _has_default_acl,
    _prepare_target,
    chain_warnings,
    check_target,
    plan_source,
    safe_member,
    selector,
)
from .restore_write import (  # noqa: F401 - re-exported
    _FILE_FLAGS,
    SMALL_FILE,
    WRITERS,
    _Meta,
    _Tree,
    _write_large,
    _Writers,
)

log = logging.getLogger(__name__)


def restore_source(storage: Storage, catalog: Catalog, snap: Snapshot, source: str, target: Path, *,
                   includes: list[str] | None = None, force: bool = False, progress: Progress | None = None,
                   finish: Callable[[Path], dict[str, Any]] | None = None, no_owner: bool = False) -> SourceRestore:
    """Restore one source. Memory holds directories, symlinks, hard links and at most
    :data:`~.restore_plan.KEEP_ENTRIES` wanted files (the archives those fit need no pass of their own over the
    index); other files are streamed and merged.

    Owners are restored when running as root unless ``no_owner`` (like tar's ``--no-same-owner``); modes,
    extended attributes, ACLs and times always; the source root's own metadata when the snapshot recorded it."""
    if source not in snap.sources:
        raise NotFoundError(f"snapshot {snap.id} has no source {source!r}", hint=f"it has: {', '.join(sorted(snap.sources))}")
    rec = snap.sources[source]
    chain = {s.id: s for s in catalog.chain_of(snap)}
    select = selector(includes)
    plan = plan_source(storage, rec["objects"]["index"], select)
    if includes and plan.empty():
        raise NotFoundError(f"no path of source {source} in {snap.id} matches {includes}", hint="check the globs with `backupctl show`")
    for sid in plan.per_snap:
        if sid not in chain:
            raise IntegrityError(f"index of {source} in {snap.id} names snapshot {sid!r}, which is not in its chain",
                                 hint="run `backupctl verify --read-data`; restore from another storage")
    final, partial = _prepare_target(target, source, force)
    progress = progress or Progress.null()
    out = SourceRestore(source, rec["kind"], str(final))
    out.warnings.extend(chain_warnings(catalog, snap, source))
    # directory ACLs are set last, after every entry below exists: only the target's default ACL is inherited
    meta = _Meta(os.geteuid() == 0 and not no_owner, out.warnings, strip_acls=_has_default_acl(partial))
    tree = _Tree(partial)
    try:
        for path in plan.dirs:  # canonical order: parents first
            tree.dir(path)
        for sid in snap.chain:
            if plan.per_snap.get(sid):
                _restore_archive(storage, chain[sid], source, rec["objects"]["index"], plan, select, bool(includes),
                                 tree, out, progress, meta)
        _link_hardlinks(plan, select, tree, out, snap.id)
        _make_symlinks(plan.links, tree, meta)
        for path in sorted(plan.dirs, key=lambda p: -p.count("/")):
            meta(tree.dir(path, create=False), path, plan.dirs[path])
        _root_metadata(rec, snap.id, source, tree, meta)
        tree.close()
        if finish is not None:  # partial database restores happen before the result becomes visible
            out.extra.update(finish(partial))
        if final.exists() or final.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{source}.old-", dir=target))
            os.replace(final, old / "x")
            shutil.rmtree(old)
        os.replace(partial, final)
    except BaseException:
        if tree.stack:
            tree.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _restore_archive(storage: Storage, snap: Snapshot, source: str, idx_obj: dict[str, Any], plan: Plan,
                     select: Callable[[str], bool], partial: bool, tree: _Tree, out: SourceRestore,
                     progress: Progress, meta: _Meta) -> None:
    """The wanted files of ``snap``'s archive of ``source``: kept by the plan, or streamed from the index again.
    A ``partial`` restore reads only the frames holding them."""
    sid = snap.id
    obj = snap.sources.get(source, {}).get("objects", {}).get("archive")
    if obj is None:
        raise IntegrityError(f"snapshot {sid} should hold {plan.per_snap[sid]} file(s) of {source} but has no archive")

    def wanted() -> Iterator[tuple[str, str, IndexEntry]]:
        for p, e in iter_index(storage, idx_obj):
            if e.type == "f" and e.snap == sid and e.link is None:
                if select(p):
                    yield p, p, e
                elif p in plan.alias:
                    yield p, plan.alias[p], e

    frames = load_frames(storage, obj)
    listed = plan.kept.get(sid)
    if frames is None or not partial:
        _extract_archive(storage, obj, wanted() if listed is None else iter(listed), tree, out, progress, meta, frames)
    else:  # a partial restore reads only the frames holding what it restores
        todo = list(wanted()) if listed is None else listed
        _extract_archive(storage, obj, iter(todo), tree, out, progress, meta, frames, frame_index_runs(frames, todo))


def _link_hardlinks(plan: Plan, select: Callable[[str], bool], tree: _Tree, out: SourceRestore, snap_id: str) -> None:
    """Hard links, after every file is written and before any symlink exists."""
    for path, first in plan.hardlinks.items():
        src = first if select(first) else plan.alias[first]
        try:
            if src == path:
                st = os.stat(tree.parent(path)[1], dir_fd=tree.parent(path)[0], follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise FileNotFoundError
                continue
            sfd, sname = tree.parent(src)
            sfd = os.dup(sfd)
            try:
                dfd, dname = tree.parent(path)
                os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(sfd)
        except OSError:
            raise IntegrityError(f"hard link {path!r} -> {first!r}: {first!r} is not a file restored from {snap_id}",
                                 hint="run `backupctl verify --read-data`; restore from another storage") from None
        out.files += 1  # the same (verified) content under another name
        out.verified += 1


def _make_symlinks(links: dict[str, IndexEntry], tree: _Tree, meta: _Meta) -> None:
    """Symlinks last: nothing is ever written through one."""
    for path, e in links.items():
        pfd, name = tree.parent(path)
        try:
            os.symlink(e.link, name, dir_fd=pfd)  # type: ignore[arg-type]
        except FileExistsError:
            raise RefusedError(f"symlink {path!r} would replace another entry of the restore; refusing") from None
        if meta.chown and e.owner is not None:
            os.chown(name, *fsmeta.resolve_owner(e.owner), dir_fd=pfd, follow_symlinks=False)
        os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)


def _root_metadata(rec: dict[str, Any], snap_id: str, source: str, tree: _Tree, meta: _Meta) -> None:
    """The source root's own mode, owner, attributes and time, when the snapshot recorded them."""
    root = (rec.get("details") or {}).get("root")
    if not isinstance(root, dict):
        return
    try:
        rmeta = IndexEntry("d", 0, int(root["mtime_ns"]), int(root["mode"]) & 0o7777, 0, None, None, snap_id,
                           fsmeta.owner_from_json(root["owner"]), fsmeta.xattrs_from_json(root["xattrs"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"snapshot {snap_id}: the root record of {source} is damaged ({exc})",
                             hint="run `backupctl verify`; restore from another storage") from None
    meta(tree.dir(""), ".", rmeta)


class _Merge:
    """Merges one archive's members with the wanted files it holds (both in canonical order): checks every
    member's name, writes the wanted ones (see :func:`_extract_archive`)."""

    def __init__(self, storage: Storage, obj: dict[str, Any], wanted: Iterator[tuple[str, str, IndexEntry]],
                 tree: _Tree, out: SourceRestore, progress: Progress, meta: _Meta) -> None:
        self.storage, self.obj, self.wanted, self.tree, self.out = storage, obj, wanted, tree, out
        self.progress, self.meta = progress, meta
        self.writers = _Writers()
        self.retired: list[int] = []  # directories the tree left while writes in them may still be queued
        self.batches: list[list[int]] = []
        self.w = next(wanted, None)
        self.last_key: list[str] | None = None
        self.last_sym: str | None = None
        self.superseded: str | None = None  # a torn file's first, zero-completed member: its next copy may follow
        tree.retire = self.retired.append

    def missing(self, path: str) -> IntegrityError:
        return IntegrityError(f"{path}: not found in archive {self.obj['key']} where the index says it is",
                              hint="run `backupctl verify --read-data`; restore from another storage")

    def damaged(self, name: str) -> IntegrityError:
        return IntegrityError(f"{name}: restored content does not match its SHA-256 in the index ({self.obj['key']})",
                              hint="the stored object is damaged: run `backupctl verify --read-data` and restore from another storage")

    def check(self, m: tarstream.Member) -> tuple[str, list[str]]:
        """The member's safe name and order key; a crafted or misordered archive is refused."""
        name = safe_member(m.name)
        if m.islnk():
            safe_member(m.linkname)
        key = order_key(name)
        last_key = self.last_key
        if last_key is not None and key <= last_key and not (key == last_key and name == self.superseded):
            if key == last_key:
                raise RefusedError(f"archive {self.obj['key']} holds {m.name!r} twice; refusing to restore it")
            raise IntegrityError(f"{self.storage.name}: archive {self.obj['key']} is out of order at {m.name!r}",
                                 hint="restore from another storage; run `backupctl verify --read-data`")
        self.last_key, self.superseded = key, None
        if self.last_sym is not None and name.startswith(self.last_sym):  # descendants follow their ancestor
            raise RefusedError(f"archive member {m.name!r} goes through a symlink of the same archive; refusing")
        if m.issym():
            self.last_sym = name + "/"
        return name, key

    def member(self, m: tarstream.Member, data: tarstream.MemberReader) -> None:
        name, key = self.check(m)
        w = self.w
        if w is None or not m.isfile():
            return
        if order_key(w[0]) < key:
            raise self.missing(w[0])
        if w[0] != name:
            return
        _, dest, e = w
        try:
            if not self.write(m, data, name, dest, e):
                self.superseded = name
                return
        except FileExistsError:
            raise RefusedError(f"{dest!r} is written twice by this restore; refusing") from None
        self.out.files += 1
        self.out.bytes += e.size
        self.out.verified += 1
        self.w = next(self.wanted, None)
        if e.torn:  # its zero-completed copy, if it matched anyway, may be followed by the copy as read
            self.superseded = name

    def write(self, m: tarstream.Member, data: tarstream.MemberReader, name: str, dest: str, e: IndexEntry) -> bool:
        """Write the member to ``dest``; False when it is a torn file's zero-completed copy (the next one is it)."""
        pfd, fname = self.tree.parent(dest)
        if e.torn and m.size != e.size:  # the zero-completed copy of a torn file: the next one is it
            return False
        if m.size <= SMALL_FILE and not e.torn:  # hashed, created, written on a writer thread (GIL-free)
            content = data.read_all()
            self.writers.submit(pfd, fname, content, dest, e, self.meta, functools.partial(self.damaged, name))
            self.progress.advance(len(content))
            if self.retired:
                self.batches.append(self.retired[:])
                self.retired.clear()
                self.writers.close_later(self.batches[-1])
            return True
        if _write_large(pfd, fname, data, m.size, self.progress) != e.sha256:
            if e.torn:  # a zero-completed copy of the same size as what was read: the next one is it
                os.unlink(fname, dir_fd=pfd)
                return False
            raise self.damaged(name)
        fd = os.open(fname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            self.meta(fd, dest, e)
        finally:
            os.close(fd)
        return True

    def close(self) -> None:
        self.writers.close()
        self.tree.retire = os.close
        for fds in (*self.batches, self.retired):  # not closed by the writer (a failure cancelled its tasks)
            for fd in fds:
                os.close(fd)


def _extract_archive(storage: Storage, obj: dict[str, Any], wanted: Iterator[tuple[str, str, IndexEntry]],
                     tree: _Tree, out: SourceRestore, progress: Progress, meta: _Meta,
                     frames: list[tarstream.Frame] | None = None, runs: list[list[int]] | None = None) -> None:
    """Merge one archive's members with the wanted files it holds (both in canonical order).

    ``wanted`` yields (member path, path to write, entry): the two differ only for a file whose bytes go to a
    hard link to it (when ``--include`` selected the link but not the file). A large file that shrank while it
    was backed up (``torn`` in the index) may appear twice: first completed with zeros, then as read; the member
    whose content matches the index is the one kept, and only such a file may appear twice.

    ``frames`` (the archive's frame table, :func:`load_frames`): the frames are decompressed in parallel
    (:class:`_ParallelFrames`), all of them or only the ``runs`` of frame numbers (:func:`frame_index_runs`, a
    partial restore); without a table (format 1) the archive is one stream, decompressed ahead on one thread.

    Every restored file is checked against its SHA-256 in the (checksum-verified) index, so the archive's own
    object hash is not recomputed here: that is `verify --read-data`'s job. Member names are only matched
    against the (validated) index paths; every member name is still checked so a crafted archive is refused."""
    merge = _Merge(storage, obj, wanted, tree, out, progress, meta)
    with ExitStack() as stack:
        if frames is None:
            raw = stack.enter_context(storage.open_read(obj["key"]))
            zr = stack.enter_context(zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK, closefd=False,
                                                                                read_across_frames=True))
            z: Any = PrefetchReader(zr, CHUNK)
        else:
            z = _ParallelFrames(storage, obj["key"], frames, runs if runs is not None else [list(range(len(frames)))])
        try:
            for m, data in tarstream.iter_members(z, CHUNK):
                merge.member(m, data)
            merge.writers.finish()
        except tarstream.TarFormatError as exc:
            raise IntegrityError(f"{storage.name}: archive {obj['key']} is damaged ({exc})",
                                 hint="restore from another storage; run `backupctl verify --read-data`") from None
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{storage.name}: archive {obj['key']} cannot be decompressed ({exc})",
                                 hint="restore from another storage; run `backupctl verify --read-data`") from None
        finally:
            z.close()
            merge.close()
    if merge.w is not None:
        raise merge.missing(merge.w[0])
    for _ in wanted:  # drain: the index stream checks its own SHA-256 at the end
        pass


def restore(storage: Storage, catalog: Catalog, snap: Snapshot, target: Path, *, sources: list[str] | None = None,
            includes: list[str] | None = None, tables: list[str] | dict[str, list[str]] | None = None,
            force: bool = False, pg_target: str | None = None, progress: Progress | None = None,
            no_owner: bool = False) -> list[SourceRestore]:
    """Restore ``snap`` (its whole chain, newest version of each path) from ``storage`` into ``target/<source>/``,
    every file SHA-256 checked against the manifest while written. ``sources``/``includes``/``tables`` narrow
    what is restored (``tables`` as a dict: per database source, e.g. with the dependencies a plan added); a
    non-empty target is refused unless ``force``; ``pg_target`` loads PostgreSQL dumps into that database (chosen
    tables holding rows there are replaced only with ``force``). Returns one :class:`SourceRestore` per source."""
    names = sources or sorted(snap.sources)
    for n in names:
        if n not in snap.sources:
            raise NotFoundError(f"snapshot {snap.id} has no source {n!r}", hint=f"it has: {', '.join(sorted(snap.sources))}")
    if tables and not any(snap.sources[n]["kind"] in ("sqlite", "postgres") for n in names):
        raise ConfigError("--table applies to sqlite and postgres sources only", hint="add --source with a database source")
    target = Path(target)
    check_target(target, force)
    chosen = tables

    def one(n: str) -> SourceRestore:
        kind = snap.sources[n]["kind"]
        finish = None
        tables = chosen.get(n, []) if isinstance(chosen, dict) else chosen
        if kind == "sqlite" and tables:
            from .databases import keep_sqlite_tables

            dbname = snap.sources[n]["details"]["database"]

            def finish(p: Path) -> dict[str, Any]:
                return {"tables": keep_sqlite_tables(p / dbname, tables)}
        elif kind == "postgres" and (pg_target or tables):
            from .databases import pg_restore

            # foreign keys to excluded tables, left out on restore (source option drop_dangling_foreign_keys)
            skip = snap.sources[n]["details"].get("dangling_foreign_keys") or None

            def finish(p: Path) -> dict[str, Any]:
                return pg_restore(p / "dump", pg_target, tables, force=force, skip_foreign_keys=skip)
        r = restore_source(storage, catalog, snap, n, target, includes=includes if kind == "files" else None,
                           force=force, progress=progress, finish=finish, no_owner=no_owner)
        log.info("restored %s: %d files, %.1f MB, all SHA-256 verified, into %s", n, r.files, r.bytes / 1e6, r.path)
        for w in r.warnings:
            log.warning("restored %s with a warning: %s", n, w)
        return r

    # one source after the other: restoring two at once measured no faster (the GIL and the disk are shared)
    return [one(n) for n in names]
