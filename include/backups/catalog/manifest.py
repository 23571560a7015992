"""Snapshot manifests (the commit marker), the repository key layout, and chain resolution.

Repository layout on every storage (see docs/format.md):

    snapshots/<id>.json                 manifest, written LAST: its presence is the commit
    data/<id>/<source>.tar.zst          tar (zstd) of the members stored by this snapshot (absent if none)
    data/<id>/<source>.index.zst        JSON Lines (zstd): the source's complete state at this snapshot
    data/<id>/<source>.sums.zst         `sha256sum -c` lines (zstd) for every regular file of that state
    data/<id>/<source>.deleted.zst      paths deleted since the parent, one per line (zstd)
    data/<id>/<source>.part.json        the source's record before commit (copied into the manifest)

A manifest carries ``checksum``: the SHA-256 of its own canonical JSON without that field, so a corrupted or
truncated manifest is detected, not trusted.

Order of snapshots (``latest``, the parent of a new backup): a manifest's ``sequence`` is 1 + the highest
sequence on the storage when its backup was planned, so the snapshot whose data was read last is the newest
whatever the clocks or ``--logical-date`` said; :meth:`Catalog.latest` takes the highest ``(sequence, logical
date, id)``. A manifest written before ``sequence`` existed counts as sequence 0 (ordered by logical date among
its peers, older than every sequenced one). :meth:`Catalog.ordered` (listings, retention) stays by logical date.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import FORMAT_VERSION, __version__
from ..config import is_safe_name
from ..errors import IntegrityError, NotFoundError, ObjectNotFound, RefusedError, printable
from ..storage.base import Storage

ID_RE = re.compile(r"^(?P<tier>[a-z][a-z0-9_]{0,62})-(?P<ts>\d{8}T\d{6}Z)$")
OBJECT_KINDS = ("archive", "index", "sums", "deleted")
_EXT = {"archive": "tar.zst", "index": "index.zst", "sums": "sums.zst", "deleted": "deleted.zst", "part": "part.json"}
#: a logical date further ahead of the clock than this is "in the future": refused for a new backup, and such a
#: snapshot never makes retention forget an older one (see backups.engine.retention)
FUTURE_TOLERANCE = timedelta(minutes=5)


def snapshot_id(tier: str, logical_date: datetime) -> str:
    """Deterministic id from tier and logical date (an Airflow retry reuses it)."""
    if logical_date.tzinfo is None:
        logical_date = logical_date.replace(tzinfo=UTC)
    ld = logical_date.astimezone(UTC)
    return f"{tier}-{ld.year:04d}{ld:%m%dT%H%M%SZ}"  # %Y is not zero-padded before year 1000 (glibc)


def manifest_key(snap: str) -> str:
    return f"snapshots/{snap}.json"


def object_key(snap: str, source: str, kind: str) -> str:
    return f"data/{snap}/{source}.{_EXT[kind]}"


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal(doc: dict[str, Any]) -> bytes:
    """Serialise a manifest with its self-checksum (pretty, stable key order)."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    body["checksum"] = hashlib.sha256(canonical(body)).hexdigest()
    return (json.dumps(body, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def unseal(raw: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(
            f"manifest {where} is corrupt or truncated ({exc.__class__.__name__}: {exc})",
            hint="restore from another storage or an older snapshot; `backupctl verify --all` lists what is affected",
        ) from None
    if not isinstance(doc, dict) or "checksum" not in doc:
        raise IntegrityError(f"manifest {where} is not a snapshot manifest (no checksum field)")
    body = {k: v for k, v in doc.items() if k != "checksum"}
    if hashlib.sha256(canonical(body)).hexdigest() != doc["checksum"]:
        raise IntegrityError(
            f"manifest {where} fails its checksum: it was modified or damaged",
            hint="restore from another storage or an older snapshot",
        )
    sources = doc.get("sources")
    if not isinstance(sources, dict):
        raise IntegrityError(f"manifest {where} has no sources mapping", hint="restore from another storage or an older snapshot")
    for name in sources:
        if not is_safe_name(name):
            raise RefusedError(
                f"manifest {where} names a source {name!r}, which is not a safe name (lowercase letters, digits and _): "
                "it could make a restore write outside its target; refusing to use this snapshot",
                hint="the repository was tampered with: restore from another storage")
    sid = doc.get("id")
    if not isinstance(sid, str) or ID_RE.match(sid) is None:
        raise RefusedError(f"manifest {where} has an invalid snapshot id {sid!r}; refusing to use this snapshot",
                           hint="the repository was tampered with: restore from another storage")
    for name, rec in sources.items():  # a snapshot's objects live under its own keys, and nowhere else
        objects = rec.get("objects") if isinstance(rec, dict) else None
        if not isinstance(objects, dict):
            raise IntegrityError(f"manifest {where}: source {name!r} has no objects mapping",
                                 hint="restore from another storage or an older snapshot")
        for kind, obj in objects.items():
            if obj is not None and (kind not in _EXT or not isinstance(obj, dict)
                                    or obj.get("key") != object_key(sid, name, kind)):
                raise RefusedError(
                    f"manifest {where}: object {kind!r} of source {name!r} has the key "
                    f"{obj.get('key') if isinstance(obj, dict) else obj!r}, not {object_key(sid, name, kind) if kind in _EXT else '?'}; "
                    "refusing to use this snapshot", hint="the repository was tampered with: restore from another storage")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise IntegrityError(
            f"manifest {where} has format_version {doc['format_version']}; this backupctl reads up to {FORMAT_VERSION}",
            hint="upgrade backupctl",
        )
    # texts that list, show, status and restore print: anyone who can write to the storage can seal a manifest, so
    # no control or bidirectional formatting characters (a valid value never has any)
    # (tabs and line feeds kept: a replica's manifest is sealed again from this document)
    for name in _PRINTED:
        if isinstance(doc.get(name), str):
            doc[name] = printable(doc[name], 10_000, lines=True)
    if isinstance(doc.get("warnings"), list):
        doc["warnings"] = [printable(w, 10_000, lines=True) for w in doc["warnings"]]
    return doc


#: the manifest's free texts (printed as they are)
_PRINTED = ("tier", "type", "requested_type", "promoted_reason", "comment", "host", "tool", "tool_version")


def _aware(text: Any) -> datetime | None:
    try:
        d = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


def data_time(snapshot: Snapshot | dict[str, Any]) -> datetime:
    """When the snapshot's data was read — the one basis of a snapshot's age everywhere (the drill's RPO, the
    status's freshness): the backup run's ``started_at`` in the manifest (the extraction follows it, so the data
    is at least this new), else its commit time ``finished_at``, else its logical date. Never the logical date
    when the manifest says when the run started: a backup of a stale scheduled slot, or with ``--logical-date`` in
    the past, holds the data of the day it ran."""
    doc = snapshot.doc if isinstance(snapshot, Snapshot) else snapshot
    for key in ("started_at", "finished_at", "logical_date"):
        when = _aware(doc.get(key)) if doc.get(key) else None
        if when is not None:
            return when
    raise IntegrityError(f"snapshot {doc.get('id')!r}: its manifest records no time (started_at, finished_at, "
                         "logical_date)", hint="the manifest is damaged: see `backupctl verify`")


@dataclass
class Snapshot:
    """A committed snapshot (a parsed, checksum-verified manifest)."""

    doc: dict[str, Any]

    @property
    def id(self) -> str:
        return self.doc["id"]

    @property
    def tier(self) -> str:
        return self.doc["tier"]

    @property
    def type(self) -> str:
        return self.doc["type"]

    @property
    def parent(self) -> str | None:
        return self.doc.get("parent")

    @property
    def logical_date(self) -> datetime:
        return datetime.fromisoformat(self.doc["logical_date"])

    @property
    def chain(self) -> list[str]:
        return list(self.doc["chain"])

    @property
    def sequence(self) -> int:
        """The manifest's ``sequence`` (0 when absent — a manifest older than the field — or not a count)."""
        v = self.doc.get("sequence")
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

    def newness(self) -> tuple[int, datetime, str]:
        """The order of "newest data": sequence, then logical date, then id."""
        return self.sequence, self.logical_date, self.id

    def in_future(self, now: datetime) -> bool:
        """Dated, or committed by its host's clock, more than ``FUTURE_TOLERANCE`` after ``now``: a mistyped logical
        date or a clock that ran ahead. Such a snapshot never counts as a tier's newest (status, drill)."""
        limit = now + FUTURE_TOLERANCE
        try:
            committed = datetime.fromisoformat(str(self.doc.get("finished_at")))
        except ValueError:
            committed = None
        if committed is not None and committed.tzinfo is None:
            committed = committed.replace(tzinfo=UTC)
        return self.logical_date > limit or (committed is not None and committed > limit)

    @property
    def sources(self) -> dict[str, dict[str, Any]]:
        return self.doc["sources"]

    def objects(self) -> Iterable[dict[str, Any]]:
        """Every object this snapshot itself stored (key, size, sha256)."""
        for rec in self.sources.values():
            for kind in OBJECT_KINDS:
                obj = rec["objects"].get(kind)
                if obj:
                    yield obj

    def summary(self) -> dict[str, Any]:
        d = self.doc
        return {
            "id": d["id"],
            "tier": d["tier"],
            "type": d["type"],
            "parent": d.get("parent"),
            "logical_date": d["logical_date"],
            "sequence": self.sequence,
            "started_at": d["started_at"],
            "finished_at": d["finished_at"],
            "sources": sorted(d["sources"]),
            "files": d["totals"]["files"],
            "bytes": d["totals"]["bytes"],
            "stored_bytes": d["totals"]["stored_bytes"],
            "status": "committed",
        }


class Catalog:
    """All manifests on one storage, loaded once. Corrupt manifests are kept aside, never used as parents."""

    def __init__(self, storage: Storage, application: str | None = None) -> None:
        self.storage = storage
        self.snapshots: dict[str, Snapshot] = {}
        self.broken: dict[str, str] = {}
        self.refused: set[str] = set()  #: broken because unsafe (exit 7), not damaged
        for info in storage.list("snapshots/"):
            if not info.key.endswith(".json"):
                continue
            sid = info.key[len("snapshots/") : -len(".json")]
            try:
                doc = unseal(storage.get_bytes(info.key), f"{info.key} on {storage.name}")
            except (IntegrityError, RefusedError) as exc:
                self.broken[sid] = exc.message
                if isinstance(exc, RefusedError):
                    self.refused.add(sid)
                continue
            if application and doc.get("application") != application:
                continue
            self.snapshots[sid] = Snapshot(doc)

    def ordered(self, tier: str | None = None) -> list[Snapshot]:
        snaps = [s for s in self.snapshots.values() if tier is None or s.tier == tier]
        return sorted(snaps, key=lambda s: (s.logical_date, s.id))

    def latest(self, tier: str | None = None) -> Snapshot | None:
        """The snapshot (of ``tier``) holding the newest data: the highest :meth:`Snapshot.newness`."""
        snaps = [s for s in self.snapshots.values() if tier is None or s.tier == tier]
        return max(snaps, key=Snapshot.newness, default=None)

    def next_sequence(self) -> int:
        """The ``sequence`` of a snapshot planned now: 1 + the highest one here."""
        return 1 + max((s.sequence for s in self.snapshots.values()), default=0)

    def get(self, ref: str, tier: str | None = None) -> Snapshot:
        if ref == "latest":
            newest = self.latest(tier)
            if newest is None:
                from ..errors import did_you_mean

                where = f" in tier {tier!r}" if tier else ""
                raise NotFoundError(f"no snapshot{where} on storage {self.storage.name}",
                                    hint=(did_you_mean(tier, {s.tier for s in self.snapshots.values()}) if tier else "")
                                    + "run `backupctl backup --tier ...` first")
            return newest
        if ref in self.snapshots:
            return self.snapshots[ref]
        if ref in self.broken:
            cls = RefusedError if ref in self.refused else IntegrityError
            raise cls(self.broken[ref], hint="restore from another storage or an older snapshot")
        # a unique prefix of an id (restic/borg style: ``daily-2026113``); the exact id always wins (above)
        ids = sorted({*self.snapshots, *self.broken})
        found = [i for i in ids if i.startswith(ref)] if ref else []
        if len(found) == 1:
            return self.get(found[0])
        if found:
            from ..errors import ConfigError

            shown = ", ".join(found[:10]) + (f", … ({len(found)} in all)" if len(found) > 10 else "")
            raise ConfigError(f"snapshot id prefix {ref!r} is ambiguous on storage {self.storage.name}: it matches {shown}",
                              hint="give more of the id (a unique prefix is enough; `backupctl list` shows the ids)")
        from ..errors import did_you_mean

        raise NotFoundError(f"no snapshot {ref!r} on storage {self.storage.name}",
                            hint=did_you_mean(ref, ids) + "`backupctl list` shows the ids (a unique prefix is enough)")

    def chain_of(self, snap: Snapshot) -> list[Snapshot]:
        """The snapshots a restore of ``snap`` needs, full first."""
        out = []
        for sid in snap.chain:
            if sid not in self.snapshots:
                if sid in self.broken:
                    cls = RefusedError if sid in self.refused else IntegrityError
                    raise cls(f"snapshot {snap.id} needs {sid}, whose manifest is damaged: {self.broken[sid]}")
                raise IntegrityError(
                    f"snapshot {snap.id} needs {sid}, which is missing from storage {self.storage.name}",
                    hint="restore from another storage, or choose a snapshot whose chain is complete (`backupctl verify --all`)",
                )
            out.append(self.snapshots[sid])
        return out

    def missing_objects(self, snap: Snapshot) -> list[str]:
        """Structural check of a whole chain: every object present with its recorded size."""
        problems = []
        for s in self.chain_of(snap):
            for obj in s.objects():
                try:
                    size = self.storage.stat(obj["key"]).size
                except ObjectNotFound:
                    problems.append(f"{obj['key']}: missing")
                    continue
                if size != obj["size"]:
                    problems.append(f"{obj['key']}: size {size}, manifest says {obj['size']}")
        return problems


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_manifest(**fields: Any) -> dict[str, Any]:
    doc = {"format_version": FORMAT_VERSION, "tool": "fmr-backups", "tool_version": __version__}
    doc.update(fields)
    return doc
