"""Planning a restore: what ``--include`` selects (:func:`selector`), the target checks, and the first pass
over a source's index (:func:`plan_source`: the directories, symlinks and hard links to create, and per archive
how many files it holds and, when they fit, which). Part of :mod:`backups.engine.restorer`, which documents the
algorithm."""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..catalog.manifest import Catalog, Snapshot
from ..config import is_safe_name
from ..errors import RefusedError
from ..repository.index import IndexEntry, iter_index
from ..sources import fsmeta
from ..sources.files import matcher
from ..storage.base import Storage

log = logging.getLogger(__name__)

#: wanted files kept from the first pass over the index (so their archive needs no pass of its own): ~15 MB
KEEP_ENTRIES = 32768


@dataclass
class SourceRestore:
    source: str
    kind: str
    path: str
    files: int = 0
    bytes: int = 0
    verified: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    #: the snapshot's warnings for this source (its own and its chain's: torn files, unreadable paths, …) and
    #: what this restore could not do (an extended attribute the target refused)
    warnings: list[str] = field(default_factory=list)


def safe_member(name: str) -> str:
    """Normalised relative member name, or RefusedError for anything that could escape the target."""
    if not name or name.startswith("/") or "\x00" in name:
        raise RefusedError(f"archive member {name!r} has an absolute or invalid path; refusing to restore it")
    norm = posixpath.normpath(name.rstrip("/"))
    if norm in ("", ".") or norm.startswith("../") or norm == ".." or "/../" in f"/{name}/":
        raise RefusedError(f"archive member {name!r} would escape the restore target; refusing to restore it")
    return norm


_WILD = re.compile(r"(?<!\\)(?:\\\\)*[*?]")  #: an unescaped ``*`` or ``?``


def _dir_of(glob: str) -> str:
    """``dir`` of ``dir/**`` (an escaped ``\\/`` is a ``/`` too)."""
    head = glob[:-3]
    return head[:-1] if (len(head) - len(head.rstrip("\\"))) % 2 else head


def selector(includes: list[str] | None) -> Callable[[str], bool]:
    """``--include`` as a predicate: a path matches a glob, or ``p + "/x"`` matches a glob ``dir/**`` (the
    directory itself is selected). Globs without wildcards (one path each, as a list of chosen files gives; also
    the ``dir`` of a literal ``dir/**``) are a set lookup; the others one compiled alternation each way."""
    if not includes:
        return lambda p: True
    exact = {_unescape(g) for g in includes if not _WILD.search(g)}
    exact |= {_unescape(_dir_of(g)) for g in includes if g.endswith("/**") and not _WILD.search(_dir_of(g))}
    wild = matcher([g for g in includes if _WILD.search(g)])
    wild_dirs = [g for g in includes if g.endswith("/**") and _WILD.search(_dir_of(g))]
    below = matcher(wild_dirs) if wild_dirs else None
    if below is None:
        return lambda p: p in exact or wild(p)
    return lambda p: p in exact or wild(p) or below(p + "/x")


def _unescape(glob: str) -> str:
    return re.sub(r"\\(.)", r"\1", glob, flags=re.DOTALL)


def check_target(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise RefusedError(f"restore target {target} exists and is not a directory", hint="choose a directory path")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise RefusedError(f"restore target {target} is not empty",
                           hint="choose an empty or new directory, or pass --force to replace the restored sources in it")


def _prepare_target(target: Path, source: str, force: bool) -> tuple[Path, Path]:
    if not is_safe_name(source):  # also checked when the manifest is read: this is the last line of defence
        raise RefusedError(f"source name {source!r} is not a safe name; refusing to restore it")
    final = target / source
    if (final.exists() or final.is_symlink()) and not force:
        raise RefusedError(f"restore target {final} already exists", hint="pass --force to replace it")
    target.mkdir(parents=True, exist_ok=True)
    if force:  # leftovers of a killed restore of this source (a failing restore removes its own)
        for leftover in target.iterdir():
            if leftover.name.startswith((f".{source}.partial-", f".{source}.old-")) and not leftover.is_symlink():
                log.info("removing %s, left by an interrupted restore", leftover)
                shutil.rmtree(leftover, ignore_errors=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{source}.partial-", dir=target))
    return final, partial


def chain_warnings(catalog: Catalog, snap: Snapshot, source: str) -> list[str]:
    """Every warning recorded for ``source`` by the snapshots of ``snap``'s chain, oldest first, each naming its
    snapshot (a file kept from an older snapshot carries that snapshot's warning about it)."""
    out = []
    for s in catalog.chain_of(snap):
        for w in s.sources.get(source, {}).get("warnings") or []:
            out.append(f"{s.id}: {w}")
    return out


def _has_default_acl(path: Path) -> bool:
    try:
        os.getxattr(path, fsmeta.ACL_DEFAULT)
        return True
    except OSError:
        return False




@dataclass
class Plan:
    """What the first pass over a source's index found (memory: directories, symlinks, hard links and at most
    :data:`KEEP_ENTRIES` wanted files)."""

    dirs: dict[str, IndexEntry]  #: the directories to create (the selected paths' parents and selected ones)
    links: dict[str, IndexEntry]  #: the selected symlinks
    hardlinks: dict[str, str]  #: selected hard link -> the path it links to
    #: file not selected itself -> the first selected hard link to it, which gets its bytes
    alias: dict[str, str]
    per_snap: dict[str, int]  #: snapshot id -> how many wanted files its archive holds
    #: snapshot id -> its wanted files as (member, path to write, entry), or None when not kept (streamed again)
    kept: dict[str, list[tuple[str, str, IndexEntry]] | None] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.per_snap or self.dirs or self.links or self.hardlinks)


def plan_source(storage: Storage, idx_obj: dict[str, Any], select: Callable[[str], bool]) -> Plan:
    """Pass 1 over the index: directories, symlinks and hard links (few) are kept; files are counted per archive,
    and the wanted files of the archives that fit :data:`KEEP_ENTRIES` (an incremental's few, a small full's) are
    kept too, so those archives need no pass of their own over the index; the largest lists are dropped (streamed
    later) when it is exceeded."""
    dirs: dict[str, IndexEntry] = {}
    links: dict[str, IndexEntry] = {}
    hardlinks: dict[str, str] = {}
    alias: dict[str, str] = {}
    needed_dirs: set[str] = set()
    per_snap: dict[str, int] = defaultdict(int)
    kept: dict[str, list[tuple[str, str, IndexEntry]] | None] = {}
    kept_n = 0
    for path, e in iter_index(storage, idx_obj):
        if e.type == "d":
            dirs[path] = e
        elif e.type == "l":
            links[path] = e
        if not select(path):
            continue
        if e.type == "f":
            if e.link is None:
                per_snap[e.snap] += 1
                if e.snap not in kept:
                    kept[e.snap] = []
                lst = kept[e.snap]
                if lst is not None:
                    lst.append((path, path, e))
                    kept_n += 1
                    if kept_n > KEEP_ENTRIES:
                        big = max((k for k, v in kept.items() if v is not None), key=lambda k: len(kept[k] or ()))
                        kept_n -= len(kept[big] or ())
                        kept[big] = None
            else:
                hardlinks[path] = e.link
                if not select(e.link) and e.link not in alias:
                    alias[e.link] = path
                    per_snap[e.snap] += 1
        parent = path.rpartition("/")[0]
        while parent and parent not in needed_dirs:
            needed_dirs.add(parent)
            parent = parent.rpartition("/")[0]
        if e.type == "d":
            needed_dirs.add(path)
    if alias:  # a file that gets its bytes through a hard link is found by the streamed pass only
        kept = {}
    return Plan({p: e for p, e in dirs.items() if p in needed_dirs}, {p: e for p, e in links.items() if select(p)},
                hardlinks, alias, dict(per_snap), kept)
