"""Small local state of monitoring: atomic JSON files, JSON-lines history, verification and drill records.

Everything lives in :func:`backups.monitoring.status_dir` (by default ``reports/monitoring`` under the first local
storage), except the drill history, which the drill command writes to ``status_dir(cfg).parent / "drill" /
"history.jsonl"``. Writes are atomic (temp file in the same folder, fsync, rename); readers tolerate a missing or
damaged file (they log and carry on: monitoring must never fail because its own bookkeeping is damaged).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import status_dir

log = logging.getLogger("backups.monitoring")

VERIFY_STATE = "verify_state.json"
ALERT_STATE = "alert_state.json"
HISTORY = "history.jsonl"


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat(timespec="seconds") if dt is not None else None


def parse_iso(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        log.warning("monitoring: ignoring unreadable %s (%s)", path, exc)
        return default


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (the last ``limit``); damaged lines are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("monitoring: cannot read %s (%s)", path, exc)
        return []
    out = []
    for line in lines[-limit:] if limit else lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


# ------------------------------------------------------------------------------------------ verifications
def record_verification(cfg: Any, storage: str, *, ok: bool, read_data: bool, snapshots: list[str],
                        problems: int = 0, at: datetime | None = None) -> None:
    """Remember the newest verification of ``storage`` (``backupctl verify``, the DAGs' integrity check).

    Never raises: a verification must not fail because its bookkeeping could not be written (logged)."""
    try:
        path = status_dir(cfg) / VERIFY_STATE
        state = read_json(path, {}) or {}
        entry = state.get(storage) or {}
        rec = {"at": iso(at or now_utc()), "ok": ok, "read_data": read_data, "snapshots": sorted(snapshots)[-20:],
               "problems": problems}
        entry["last"] = rec
        if ok and read_data:
            entry["last_read_data_ok"] = rec
        state[storage] = entry
        write_atomic(path, json.dumps(state, indent=1, sort_keys=True))
    except Exception as exc:  # noqa: BLE001 - bookkeeping only
        log.warning("monitoring: could not record the verification of %s: %s", storage, exc)


def verifications(cfg: Any) -> dict[str, dict[str, Any]]:
    """storage -> {"last": {...}, "last_read_data_ok": {...}} (see :func:`record_verification`)."""
    state = read_json(status_dir(cfg) / VERIFY_STATE, {})
    return state if isinstance(state, dict) else {}


# ------------------------------------------------------------------------------------------ drills
def drill_history_path(cfg: Any) -> Path:
    return status_dir(cfg).parent / "drill" / "history.jsonl"


def last_drill(cfg: Any) -> dict[str, Any] | None:
    """The newest DR drill record (keys id, at, passed, rto_seconds, rpo_seconds, report) or None."""
    recs = [r for r in read_jsonl(drill_history_path(cfg), limit=200) if parse_iso(r.get("at"))]
    if not recs:
        return None
    r = max(recs, key=lambda x: parse_iso(x["at"]))
    return {"id": str(r.get("id") or ""), "at": r["at"], "passed": bool(r.get("passed")),
            "rto_seconds": r.get("rto_seconds"), "rpo_seconds": r.get("rpo_seconds"), "report": r.get("report")}


def last_passed_drill(cfg: Any) -> dict[str, Any] | None:
    recs = [r for r in read_jsonl(drill_history_path(cfg), limit=500) if r.get("passed") and parse_iso(r.get("at"))]
    return max(recs, key=lambda x: parse_iso(x["at"])) if recs else None
