"""What every command shares: the result base class, the config as a run sees it, sizes for humans."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..config import Config, load_config
from ..engine.progress import mb

if TYPE_CHECKING:
    from ..storage import Resolver

__all__ = ["Result", "approval_phrase", "config_and_resolver", "mb"]


@dataclasses.dataclass
class Result:
    """Base of command results: a dataclass that travels as a JSON-able dict (XCom, ``--json``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """The result back from its :meth:`to_dict` form (an XCom pulled by a later task); unknown keys are ignored."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def approval_phrase(approval: dict[str, Any] | None, *, when: bool = True) -> str:
    """An approval record (``{"choice", "by", "at", "note"}``) as words: ``approved by **admin** at 2026-12-07T10:00
    — go``; ``not required (require_approval was false)``; ``-`` when there is none. ``when``: include the time."""
    a = approval or {}
    choice = str(a.get("choice") or "")
    if not choice:
        return "-"
    words = {"approve": "approved", "reject": "rejected"}.get(choice.lower(), choice)
    if a.get("by"):
        words += f" by **{a['by']}**" + (f" at {a['at']}" if when and a.get("at") else "")
    note = a.get("note") or ""
    if note:
        words += f" ({note})" if not a.get("by") else f" — {note}"
    return words


def config_and_resolver(path: str | None = None, resolver: Resolver | None = None) -> tuple[Config, Resolver | None]:
    """The config (``path``, ``$BACKUP_CONFIG`` or the shipped file) and the resolver its ``conn_id`` need:
    ``resolver`` when the caller injects one, else :func:`backups.connections.resolver_for`."""
    from ..connections import resolver_for

    cfg = load_config(path)
    return cfg, resolver if resolver is not None else resolver_for(cfg)
