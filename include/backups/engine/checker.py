"""Verification of stored snapshots (restic ``check``): structure, or a full re-hash with ``read_data``.

* structure — every manifest parses and passes its checksum; every object of every snapshot's chain is
  present with the size the manifest recorded.
* read_data — additionally streams every object and compares its SHA-256 with the manifest, so a single
  flipped byte anywhere is found and named.

The report also says which snapshots had every object checked (``checked``) and the problems per snapshot
(``failed``; ``*`` for damaged manifests): the verification record (:mod:`backups.repository.verification`)
opens and closes failures per snapshot from them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..catalog.manifest import Catalog, Snapshot, manifest_key
from ..errors import BackupError, IntegrityError, ObjectNotFound
from ..storage.base import Storage, sha256_of

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    storage: str
    snapshots: list[str] = field(default_factory=list)
    objects: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    read_data: bool = False
    #: ids whose every object was checked (the chains of ``snapshots``) — for the verification record
    checked: list[str] = field(default_factory=list)
    #: id -> its problems (``*``: damaged manifests, problems of the repository as a whole)
    failed: dict[str, list[str]] = field(default_factory=dict)

    def fail(self, sid: str, problem: str) -> None:
        self.problems.append(problem)
        self.failed.setdefault(sid, []).append(problem)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"storage": self.storage, "ok": self.ok, "snapshots": self.snapshots, "objects": self.objects,
                "bytes": self.bytes, "read_data": self.read_data, "problems": self.problems}


def object_problem(storage: Storage, obj: dict[str, Any], read_data: bool) -> str | None:
    try:
        size = storage.stat(obj["key"]).size
    except ObjectNotFound:
        return f"{obj['key']}: missing"
    except BackupError as exc:
        return f"{obj['key']}: {exc.message}"
    if size != obj["size"]:
        return f"{obj['key']}: size {size}, manifest says {obj['size']}"
    if read_data:
        try:
            with storage.open_read(obj["key"]) as fh:
                digest, _ = sha256_of(fh)
        except IntegrityError as exc:  # an encrypted object that fails authentication: damage of this object
            return f"{obj['key']}: {exc.message}"
        if digest != obj["sha256"]:
            return f"{obj['key']}: SHA-256 mismatch (content altered or damaged)"
    return None


def verify(storage: Storage, catalog: Catalog, snaps: list[Snapshot] | None = None, *, read_data: bool = False,
           include_broken: bool = True) -> VerifyReport:
    report = VerifyReport(storage.name, read_data=read_data)
    if include_broken:
        for sid, msg in sorted(catalog.broken.items()):
            report.fail("*", f"{manifest_key(sid)}: {msg}")
    todo = snaps if snaps is not None else catalog.ordered()
    seen: set[str] = set()
    for snap in todo:
        report.snapshots.append(snap.id)
        try:
            chain = catalog.chain_of(snap)
        except BackupError as exc:
            report.fail(snap.id, f"{snap.id}: {exc.message}")
            continue
        for s in chain:
            if s.id not in report.checked:
                report.checked.append(s.id)
            for obj in s.objects():
                if obj["key"] in seen:
                    continue
                seen.add(obj["key"])
                report.objects += 1
                report.bytes += obj["size"]
                problem = object_problem(storage, obj, read_data)
                if problem:
                    report.fail(s.id, f"{s.id}: {problem}")
    return report
