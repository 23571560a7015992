"""The verify command: check stored snapshots — structure (manifests, presence and sizes of every object of
their chains) or, with ``read_data``, every stored byte re-hashed (SHA-256).

``backupctl verify`` calls :func:`verify`; the backup DAGs' ``verify.check_integrity`` task uses the same
checker on the snapshot it just wrote (:func:`backups.commands.backup.check_integrity`). An unreachable
storage is recorded and fails the result (``backupctl verify`` exit 5; exit 4 when damaged data was found too), the
others are still verified (see :mod:`.storages`).

Each storage's outcome is added to its verification record in the repository
(:mod:`backups.repository.verification`): the snapshots whose objects were all checked and passed are recorded as
verified, failures stay open until a later verification of that snapshot (or ``--all``) passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Result
from .storages import each_storage

if TYPE_CHECKING:
    from ..config import Config
    from ..engine.checker import VerifyReport
    from ..repository import Repository
    from ..storage import Resolver, Storage

log = logging.getLogger(__name__)


@dataclass
class VerifyResult(Result):
    """The per-storage reports (:meth:`backups.engine.checker.VerifyReport.to_dict`) and unreachable storages."""

    read_data: bool
    storages: list[dict[str, Any]] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.unreachable and all(not s["problems"] for s in self.storages)

    @property
    def problems(self) -> list[str]:
        return ([f"[{s['storage']}] {p}" for s in self.storages for p in s["problems"]]
                + [f"{n}: unreachable: {m}" for n, m in self.unreachable.items()])

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "read_data": self.read_data, "storages": self.storages,
                "unreachable": [f"{n}: unreachable: {m}" for n, m in self.unreachable.items()]}


def verify(cfg: Config, names: list[str] | None = None, *, snapshot: str | None = None, tier: str | None = None,
           every: bool = False, read_data: bool = False, resolver: Resolver | None = None) -> VerifyResult:
    """Verify ``snapshot`` (default ``latest``, of ``tier``) or, with ``every``, every snapshot and the data left
    without a manifest, on the storages ``names`` (default: every configured one). Under a shared lock per storage."""
    from ..repository import Repository, repo_scope

    if snapshot and every:
        raise ConfigError("give a SNAPSHOT or --all, not both")
    out = VerifyResult(read_data=read_data)
    for storage in each_storage(cfg, names, resolver, out.unreachable):
        repo = Repository(storage, cfg)
        with repo.lock(repo_scope(), exclusive=False, operation="verify"):
            report = _verify_storage(repo, storage, snapshot=snapshot, tier=tier, every=every, read_data=read_data,
                                     skip_empty=names is None)
            if report is not None:
                _record(repo, report, every=every, read_data=read_data)
        if report is not None:
            out.storages.append({"storage": storage.name, "describe": storage.describe(), **report.to_dict()})
    return out


def _record(repo: Repository, report: VerifyReport, *, every: bool, read_data: bool) -> None:
    """Add the storage's outcome to its verification record (monitoring's evidence). A record that cannot be
    written is logged, not fatal: the verification itself happened, and monitoring then still sees the old
    record (an open failure stays open)."""
    try:
        repo.record_verification(read_data=read_data, checked=list(report.checked), failed=dict(report.failed),
                                 every=every)
    except Exception as exc:  # noqa: BLE001 - bookkeeping must not hide the verification's own outcome
        log.warning("could not write the verification record of %s: %s", repo.name,
                    getattr(exc, "message", None) or exc)


def _verify_storage(repo: Repository, storage: Storage, *, snapshot: str | None, tier: str | None, every: bool, read_data: bool,
                    skip_empty: bool) -> VerifyReport | None:
    from ..engine.checker import verify as check

    cat = repo.catalog
    if every:
        snaps = None
    else:
        ref = snapshot or "latest"
        if ref == "latest" and not cat.ordered(tier) and skip_empty:
            return None  # a storage without any snapshot of the tier yet: nothing to verify there
        snaps = [cat.get(ref, tier)]
    if storage.archive and read_data:
        from ..engine.thaw import wait_readable

        keys = [o["key"] for s in (snaps or cat.ordered()) for c in cat.chain_of(s) for o in c.objects()]
        wait_readable(storage, keys)
    report = check(storage, cat, snaps, read_data=read_data, include_broken=every)
    if every:  # data/<id>/ without a manifest and no lock covering it: a lost commit marker
        for problem in repo.unexplained_data():
            report.fail("*", problem)
    return report
