"""Small local state of monitoring: atomic JSON files, JSON-lines history, drill records.

Everything lives in :func:`backups.monitoring.status_dir` (by default ``reports/monitoring`` under the first local
storage), except the drill history, which the drill command writes to ``status_dir(cfg).parent / "drill" /
"history.jsonl"``. Writes are atomic (temp file in the same folder, fsync, rename); readers tolerate a missing or
damaged file (they log and carry on: monitoring must never fail because its own bookkeeping is damaged); the
drill history is read line by line and its damaged lines are reported (:func:`drill_history_problems`).

The verification record is not here: it lives in each repository (:mod:`backups.repository.verification`), so
every host sees the same evidence. The per-host ``verify_state.json`` of earlier versions is no longer written; it
is read only to carry a failed verification over into a repository that has no record yet.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import status_dir

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger("backups.monitoring")

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
    """Append one JSON line; after a torn last line (no newline: a killed writer) the new one starts on its own
    line, so only the torn line is lost."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:  # appends go to the end whatever the read position
        end = fh.seek(0, os.SEEK_END)
        torn = False
        if end:
            fh.seek(end - 1)
            torn = fh.read(1) != b"\n"
        fh.write((b"\n" if torn else b"") + (json.dumps(record, sort_keys=True, default=str) + "\n").encode())


def read_jsonl_checked(path: Path, limit: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a JSON-lines file (of its last ``limit`` lines) and what is wrong with the others.

    Read as bytes and decoded line by line, so one bad byte, a truncated line or a line that is not a JSON object
    is one named problem (``line 7: not UTF-8 ...``) and every other line still counts."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        return [], [f"cannot read {path}: {exc.strerror or exc}"]
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    first = max(0, len(lines) - limit) if limit else 0
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    for no, line in enumerate(lines[first:], start=first + 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            problems.append(f"line {no}: not UTF-8 (byte {line[exc.start]:#04x} at column {exc.start + 1})")
            continue
        except ValueError as exc:
            problems.append(f"line {no}: not JSON ({exc})")
            continue
        if not isinstance(rec, dict):
            problems.append(f"line {no}: a JSON {type(rec).__name__}, not an object")
            continue
        out.append(rec)
    return out, problems


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (the last ``limit``); damaged lines are skipped (logged)."""
    recs, problems = read_jsonl_checked(path, limit)
    for p in problems[:5]:
        log.warning("monitoring: %s: %s", path, p)
    return recs


# ------------------------------------------------------------------------------------------ drills
def drill_history_path(cfg: Config) -> Path:
    return status_dir(cfg).parent / "drill" / "history.jsonl"


def _in_future(rec: dict[str, Any], now: datetime | None) -> bool:
    """A drill record dated more than ``FUTURE_TOLERANCE`` after ``now`` (a host whose clock ran ahead): it never
    counts as the last drill, or it would hide every later one until its date had passed."""
    from ..catalog.manifest import FUTURE_TOLERANCE

    at = parse_iso(rec.get("at"))
    return at is not None and at > (now or now_utc()) + FUTURE_TOLERANCE


def drill_history_problems(cfg: Config, now: datetime | None = None) -> list[str]:
    """What is wrong with lines of the drill history (bad bytes, truncated lines, drills dated in the future), for a
    monitoring problem."""
    recs, problems = read_jsonl_checked(drill_history_path(cfg), limit=500)
    problems += [f"drill {str(r.get('id'))[:60]} is dated {str(r.get('at'))[:40]}, in the future (a host clock ahead): "
                 "not counted" for r in recs if _in_future(r, now)]
    return problems


def last_drill(cfg: Config, now: datetime | None = None) -> dict[str, Any] | None:
    """The newest DR drill record (keys id, at, passed, rto_seconds, rpo_seconds, report) or None; one dated in
    the future does not count."""
    recs = [r for r in read_jsonl(drill_history_path(cfg), limit=200) if parse_iso(r.get("at"))
            and not _in_future(r, now)]
    if not recs:
        return None
    r = max(recs, key=lambda x: cast(datetime, parse_iso(x["at"])))
    return {"id": str(r.get("id") or ""), "at": r["at"], "passed": bool(r.get("passed")),
            "rto_seconds": r.get("rto_seconds"), "rpo_seconds": r.get("rpo_seconds"), "report": r.get("report")}


def last_passed_drill(cfg: Config, now: datetime | None = None) -> dict[str, Any] | None:
    """The newest passed drill record not dated in the future, or None."""
    recs = [r for r in read_jsonl(drill_history_path(cfg), limit=500) if r.get("passed") and parse_iso(r.get("at"))
            and not _in_future(r, now)]
    return max(recs, key=lambda x: cast(datetime, parse_iso(x["at"]))) if recs else None
