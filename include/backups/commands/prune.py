"""The prune command: apply every tier's retention on a storage, under its exclusive lock, and remove orphans.

One implementation for both doors: ``backupctl prune`` calls :func:`prune` (every storage, or one); the
``backup_retention`` DAG calls :func:`prune_one` per storage (one mapped task each). An unreachable storage
fails its own part only (see :mod:`.storages`): the CLI reports it and exits 5 after pruning the others; the
DAG's task for it fails (and is retried) while the other storages' tasks go on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import StorageError
from .base import Result, mb
from .storages import each_storage, open_checked

if TYPE_CHECKING:
    from ..config import Config
    from ..storage import Resolver

log = logging.getLogger("backups.commands.prune")


@dataclass
class PruneResult(Result):
    """What a prune did (or, with ``dry_run``, would do) on each storage; ``unreachable``: name → message."""

    dry_run: bool
    storages: list[dict[str, Any]] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    #: scratch directories and databases of killed drills on this host (see :func:`.drill.clean_leftovers`)
    drill_leftovers: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.unreachable

    def error(self) -> StorageError | None:
        """The error for the storages that could not be pruned (None when every storage was)."""
        if self.ok:
            return None
        return StorageError("prune could not reach " + ", ".join(f"{n} ({m})" for n, m in self.unreachable.items()),
                            hint="the other storages were pruned; fix the storage (or the network) and prune again")


def prune_one(cfg: Config, name: str, *, dry_run: bool = False, resolver: Resolver | None = None) -> dict[str, Any]:
    """Prune storage ``name`` (raises when it is unreachable); its :class:`~backups.engine.retention.PrunePlan`
    as a dict, ``keep`` reduced to the sorted ids."""
    from ..engine.retention import prune_storage

    storage = open_checked(cfg, name, resolver, read_only=dry_run)
    return _summary(prune_storage(cfg, storage, dry_run=dry_run).to_dict(), dry_run)


def prune(cfg: Config, names: list[str] | None = None, *, dry_run: bool = False, resolver: Resolver | None = None) -> PruneResult:
    """Prune the storages ``names`` (default: every configured one; an unreachable one is recorded, see module doc),
    then remove what killed drills left on this host (their scratch directories and ``drill_*`` databases)."""
    from ..engine.retention import prune_storage
    from .drill import clean_leftovers

    out = PruneResult(dry_run=dry_run)
    for storage in each_storage(cfg, names, resolver, out.unreachable, read_only=dry_run):
        out.storages.append(_summary(prune_storage(cfg, storage, dry_run=dry_run).to_dict(), dry_run))
    out.drill_leftovers = clean_leftovers(cfg, resolver, dry_run=dry_run).to_dict()
    return out


def decision_table(plan: dict[str, Any], *, dry_run: bool = False) -> str:
    """Every snapshot of a prune plan with keep / forget and the rules that decided it (like restic forget's
    table), oldest first."""
    rows = plan.get("decisions") or []
    if not rows:
        return f"{plan['storage']}: no snapshot"
    forget = "would forget" if dry_run else "forget"
    w = max(len("snapshot"), *(len(r["id"]) for r in rows))
    lines = [f"{'snapshot':<{w}}  {'tier':<8} {'type':<12} {'action':<12} reason(s)"]
    for r in rows:
        lines.append(f"{r['id']:<{w}}  {r['tier']:<8} {r['type']:<12} "
                     f"{'keep' if r['action'] == 'keep' else forget:<12} {'; '.join(r['reasons'])}")
    return "\n".join(lines)


def _summary(plan: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    log.info("%s: keep %d, %s %d: %s; orphans %d, temp objects %d; %d object(s) / %s removed", plan["storage"],
             len(plan["keep"]), "would forget" if dry_run else "forgot", len(plan["forget"]),
             ", ".join(plan["forget"]) or "-", len(plan["orphans"]), len(plan["temps"]), plan["deleted_objects"],
             mb(plan["deleted_bytes"]))
    log.info("%s: every snapshot and the rule that decided it:\n%s", plan["storage"], decision_table(plan, dry_run=dry_run))
    return {**plan, "keep_reasons": plan["keep"], "keep": sorted(plan["keep"])}
