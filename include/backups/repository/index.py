"""A source's index: the JSON Lines (zstd) object listing the complete state of a source at a snapshot, one
typed entry per path in canonical order (docs/format.md, "Index"). Reading validates every entry (types,
order, paths that could escape a restore target) and, at the end, the object's SHA-256."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import zstandard

from ..errors import IntegrityError, RefusedError
from ..sources.fsmeta import owner_from_json, xattrs_from_json, xattrs_json
from ..storage.base import CHUNK, Storage
from ..storage.util import HashingReader


class IndexEntry(NamedTuple):
    """One index line in memory (a tuple: cheap to build and compare)."""

    type: str  #: "f" file (a hard link when ``link`` is set), "d" directory, "l" symlink
    size: int
    mtime_ns: int
    mode: int
    ino: int
    sha256: str | None
    link: str | None  #: symlink target; for a file, the path of the earlier file it is a hard link to
    snap: str  #: id of the snapshot whose archive holds the bytes (``in``)
    owner: tuple[int, int, str, str] | None = None  #: uid, gid, user, group (``o``; None: not recorded)
    xattrs: tuple[tuple[str, bytes], ...] = ()  #: extended attributes and ACLs (``x``)
    torn: bool = False  #: the file changed size while it was read: stored as read (``torn``)


def unsafe_path(path: Any) -> str | None:
    """Why ``path`` cannot be a path inside a source (None when it can): relative, no empty, ``.`` or ``..``
    component, no NUL. Every path a restore creates passes this first (cheap: string tests only)."""
    if not isinstance(path, str) or not path:
        return "it is empty or not a string"
    if path[0] == "/":
        return "it is absolute"
    if "\x00" in path:
        return "it contains a NUL byte"
    if "//" in path or path[-1] == "/":
        return "it has an empty component"
    if (path in (".", "..") or path.startswith(("./", "../")) or path.endswith(("/.", "/.."))
            or "/./" in path or "/../" in path):
        return "it has a '.' or '..' component"
    return None


_dumps = json.JSONEncoder(ensure_ascii=False).encode


def entry_json(path: str, e: IndexEntry) -> str:
    """One index line (the same JSON a ``json.dumps`` of the dict gives, built without the dict: hot path)."""
    t, size, mtime, mode, ino, sha, link, src, owner, xattrs, torn = e
    line = f'{{"p":{_dumps(path)},"t":"{t}","s":{size},"m":{mtime},"mode":{mode},"i":{ino},"in":"{src}"'
    if sha:
        line += f',"h":"{sha}"'
    if link is not None:
        line += f',"l":{_dumps(link)}'
    if owner is not None:
        line += f',"o":[{owner[0]},{owner[1]},{_dumps(owner[2])},{_dumps(owner[3])}]'
    if xattrs:
        line += f',"x":{_dumps(xattrs_json(xattrs))}'
    if torn:
        line += ',"torn":true'
    return line + "}"


def order_key(path: str) -> list[str]:
    """The canonical order of entries: by path components (a directory right before its contents)."""
    return path.split("/")


_TYPES = frozenset("fdl")
_new = tuple.__new__  # builds an IndexEntry without the Python-level NamedTuple constructor (hot path)
_REPAIR = "run `backupctl verify --read-data`; restore from another storage"


def iter_index(storage: Storage, obj: dict[str, Any]) -> Iterator[tuple[str, IndexEntry]]:
    """Stream an index object in its (canonical) order, checking order and, at the end, its SHA-256.

    A damaged index (bad zstd, bad JSON, wrong fields, out of order) is an IntegrityError; an entry whose path
    could escape (absolute, ``..``), a duplicate, or an entry below a non-directory is a RefusedError."""
    last: list[str] | None = None
    last_path, last_type = "", "d"
    key_name = obj.get("key") if isinstance(obj, dict) else None
    where = f"{storage.name}: index {key_name}"
    try:
        with storage.open_read(obj["key"]) as raw:
            hr = HashingReader(raw)
            # HashingReader is duck-typed: zstandard reads any object with read()
            with zstandard.ZstdDecompressor().stream_reader(hr, closefd=False) as z:  # type: ignore[arg-type]
                for n, line in enumerate(io.TextIOWrapper(z, encoding="utf-8", errors="surrogateescape"), 1):
                    d = json.loads(line)
                    p = d["p"]
                    o, x = d.get("o"), d.get("x")
                    e = _new(IndexEntry, (d["t"], d["s"], d["m"], d["mode"], d["i"], d.get("h"), d.get("l"), d["in"],
                                          o if o is None else owner_from_json(o),
                                          () if x is None else xattrs_from_json(x), "torn" in d and d["torn"] is True))
                    if (e.type not in _TYPES or type(e.size) is not int or type(e.mtime_ns) is not int
                            or type(e.mode) is not int or not isinstance(e.snap, str)
                            or not (e.link is None or isinstance(e.link, str))
                            or not (e.sha256 is None or isinstance(e.sha256, str))):
                        raise IntegrityError(f"{where}: line {n} is not a valid entry", hint=_REPAIR)
                    why = unsafe_path(p)
                    if why is not None:
                        raise RefusedError(f"{where}: entry {p!r} would escape the restore target ({why}); refusing")
                    if e.type == "f" and e.link is not None and unsafe_path(e.link) is not None:
                        raise RefusedError(f"{where}: hard link {p!r} -> {e.link!r} would escape the restore target; refusing")
                    key = order_key(p)
                    if last is not None and key <= last:
                        if key == last:
                            raise RefusedError(f"{where}: duplicate entry {p!r}; refusing to restore it")
                        raise IntegrityError(f"{where} is out of order at {p!r}", hint=_REPAIR)
                    if last_type != "d" and p.startswith(last_path + "/"):
                        raise RefusedError(f"{where}: entry {p!r} goes through {last_path!r}, which is not a directory; refusing")
                    last, last_path, last_type = key, p, e.type
                    yield p, e
            while hr.read(CHUNK):
                pass
    except (ValueError, KeyError, TypeError, AttributeError, zstandard.ZstdError) as exc:  # JSONDecodeError is a ValueError
        raise IntegrityError(f"{where} is damaged ({exc.__class__.__name__}: {exc})", hint=_REPAIR) from None
    if hr.hexdigest() != obj["sha256"]:
        raise IntegrityError(f"{where} does not match its SHA-256 in the manifest", hint=_REPAIR)
