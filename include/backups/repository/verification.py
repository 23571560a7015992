"""The verification record of one storage, kept in the repository (``verification/<application>/<stamp>-<token>.json``;
one per application, as applications may share a storage).

It is what monitoring trusts when it says a snapshot was verified, so it is written atomically and read
defensively. Objects are never overwritten (:mod:`backups.storage.base`), so the record is a series of
*generations*: every update writes a new object whose key sorts after the previous one (a UTC timestamp to the
microsecond, then a random token; a writer whose clock is behind the newest generation takes that generation's
time plus one microsecond), holding the whole state; the newest generation is the record. The writer
then removes generations older than the last :data:`KEEP` (its own bookkeeping, like a lock object).

Content (JSON, ``format`` :data:`FORMAT`, ``format_version`` 1)::

    {"format": "backups-verification-record", "format_version": 1, "application": "fmr-v2",
     "written_at": ISO,
     "last": {"at", "ok", "read_data", "scope": "all" | "snapshots", "snapshots": [...], "problems": int} | null,
     "last_read_data_ok": {...} | null,          # the last passing `verify --all --read-data`
     "verified": {"<id>": {"at": ISO, "read_data": bool, "by": "verify" | "backup"}},
     "open": {"<id>" | "*": {"since": ISO, "at": ISO, "read_data": bool, "problems": [str, ...]}}}

``verified`` holds, per snapshot, the last verification that checked every object of that snapshot and found
nothing wrong. ``open`` holds the failures still open, per snapshot (``*``: problems of the repository as a
whole — damaged manifests, data without a manifest — found by ``verify --all``). Rules (:func:`apply`):

* a verification that checked a snapshot's objects and found no problem clears that snapshot's open failure —
  a failure found by re-hashing (``read_data``) only when it re-hashed too;
* ``*`` is cleared only by a passing ``verify --all`` (with ``--read-data`` when it was found so);
* a backup's own integrity check (``by: backup``) re-hashes only the new snapshot's objects: it records (and may
  clear) only that snapshot, never another one, and never sets ``last``.

Earlier versions kept a per-host ``verify_state.json`` next to the monitoring status. It is no longer written;
while a repository has no record yet, a failed last verification found there for the storage is carried over as
an open failure of the whole repository (``*``: a passing ``verify --all`` closes it), so an upgrade never
forgets one. Once a record exists, the old file is ignored (it can be deleted).

A record that cannot be read, does not parse, has the wrong shape, or belongs to another application is a
problem (:class:`RecordRead` ``.problem``), never "no failure". Such a record is replaced only by a
verification of everything with ``--read-data`` (which re-establishes every fact it held).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..errors import BackupError
from ..storage.wrappers import VERIFICATION_PREFIX

log = logging.getLogger(__name__)

PREFIX = VERIFICATION_PREFIX
FORMAT = "backups-verification-record"
VERSION = 1
KEEP = 3
#: the per-host file of earlier versions, in the monitoring status folder (read only to migrate a failure)
LEGACY_FILE = "verify_state.json"
ALL = "*"
#: longest record we read (a record holds one small entry per snapshot)
MAX_BYTES = 8 << 20


def record_prefix(application: str | None) -> str:
    """``verification/<application>/``: applications sharing a storage keep one record each."""
    return f"{PREFIX}{application}/" if application else PREFIX


def verification_key(at: datetime | None = None, application: str | None = None) -> str:
    """``verification/<application>/<YYYYmmddTHHMMSSffffffZ>-<token>.json``: later generations sort after earlier
    ones."""
    at = (at or datetime.now(UTC)).astimezone(UTC)
    return f"{record_prefix(application)}{at.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}.json"


def _generations(storage: Any, application: str | None) -> list[str]:
    prefix = record_prefix(application)
    return sorted(i.key for i in storage.list(prefix) if i.key.endswith(".json") and "/" not in i.key[len(prefix):])


def empty(application: str | None) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": VERSION, "application": application, "written_at": None,
            "last": None, "last_read_data_ok": None, "verified": {}, "open": {}}


@dataclass
class RecordRead:
    """The newest generation (``doc``, an empty record when there is none) or why it cannot be trusted."""

    key: str | None = None
    doc: dict[str, Any] = field(default_factory=lambda: empty(None))
    #: None when the record is usable (or absent); else what is wrong with it, for a monitoring problem
    problem: str | None = None
    #: "absent" | "ok" | "unreadable" | "damaged" | "foreign"
    state: str = "absent"
    generations: list[str] = field(default_factory=list)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds")


#: a snapshot id (or ``*``) as the record may hold it: anything else marks the record damaged
_ID = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,127})$")
#: control characters, and the invisible / bidirectional formatting ones that reorder what a terminal shows
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def _clean(doc: dict[str, Any]) -> dict[str, Any]:
    """Texts as the monitoring will print them: no control characters (a hostile repository must not drive a
    terminal); problems at most 500 characters each, at most 50 per snapshot; an open failure's ``since`` and
    ``at`` a string of at most 40 characters, or None."""
    for entry in doc["open"].values():
        entry["problems"] = [_CONTROL.sub("?", p)[:500] for p in entry["problems"][:50]]
        for name in ("since", "at"):
            v = entry.get(name)
            entry[name] = _CONTROL.sub("?", v)[:40] if isinstance(v, str) else None
    return doc


def _check_shape(doc: Any, application: str | None) -> tuple[str, str] | None:
    """(state, reason) when ``doc`` is not a usable record of ``application``; None when it is."""
    if not isinstance(doc, dict):
        return "damaged", f"not a JSON object but {type(doc).__name__}"
    if doc.get("format") != FORMAT:
        return "damaged", f"no {FORMAT!r} format marker"
    if doc.get("format_version") != VERSION:
        return "damaged", f"format_version {str(doc.get('format_version'))[:20]!r}, this version reads {VERSION}"
    if application and doc.get("application") != application:
        return "foreign", f"it belongs to application {str(doc.get('application'))[:60]!r}, not {application!r}"
    for name in ("verified", "open"):
        part = doc.get(name)
        if not isinstance(part, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in part.items()):
            return "damaged", f"{name!r} is not a mapping of snapshot ids to entries"
        bad = next((k for k in part if not _ID.match(k)), None)
        if bad is not None:
            return "damaged", f"{name!r} holds {bad[:40]!r}, which is not a snapshot id"
    for sid, entry in doc["open"].items():
        if not isinstance(entry.get("problems"), list) or not all(isinstance(p, str) for p in entry["problems"]):
            return "damaged", f"open failure {sid!r} has no list of problems"
    for name in ("last", "last_read_data_ok"):
        if doc.get(name) is not None and not isinstance(doc.get(name), dict):
            return "damaged", f"{name!r} is not an object"
    return None


def legacy_failure(path: Any, storage: str) -> dict[str, Any] | None:
    """A failed verification of ``storage`` in the per-host ``verify_state.json`` of earlier versions, as an open
    failure of the whole repository (``*``), or None. Read only while the repository has no record yet, so an
    upgrade never forgets an open failure; a damaged or missing legacy file counts as nothing to migrate."""
    try:
        state = json.loads(Path(path).read_text(encoding="utf-8"))
        last = state[storage]["last"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(last, dict) or last.get("ok") is not False:
        return None
    at = last.get("at") if isinstance(last.get("at"), str) else None
    return {"since": at, "at": at, "read_data": bool(last.get("read_data")),
            "problems": [f"an earlier version recorded a failed verification at {at} ({last.get('problems')} "
                         f"problem(s)) in {path}"]}


def read(storage: Any, application: str | None, legacy: dict[str, Any] | None = None) -> RecordRead:
    """The storage's verification record. Never raises: every failure is in ``.problem``. Without any record in
    the repository, ``legacy`` (:func:`legacy_failure`) is its one open failure."""
    where = f"the verification record of storage {storage.name}"
    fix = ("fix: run `backupctl verify --all --read-data` (it re-checks every snapshot and writes a new record; "
           "`--storage NAME` for one storage)")
    try:
        keys = _generations(storage, application)
    except BackupError as exc:
        return RecordRead(problem=f"{where} cannot be listed: {exc.message}; {fix}", state="unreadable")
    except Exception as exc:  # noqa: BLE001 - a driver error is a problem, not a crash
        return RecordRead(problem=f"{where} cannot be listed: {exc.__class__.__name__}: {exc}; {fix}",
                          state="unreadable")
    if not keys:
        doc = empty(application)
        if legacy is not None:
            doc["open"][ALL] = legacy
        return RecordRead(doc=_clean(doc))
    key = keys[-1]
    try:
        with storage.open_read(key) as fh:
            raw = fh.read(MAX_BYTES + 1)
    except BackupError as exc:
        return RecordRead(key, empty(application), f"{where} ({key}) cannot be read: {exc.message}; {fix}",
                          "unreadable", keys)
    except Exception as exc:  # noqa: BLE001
        return RecordRead(key, empty(application), f"{where} ({key}) cannot be read: {exc.__class__.__name__}: "
                          f"{exc}; {fix}", "unreadable", keys)
    if len(raw) > MAX_BYTES:
        return RecordRead(key, empty(application), f"{where} ({key}) is larger than {MAX_BYTES} bytes; {fix}",
                          "damaged", keys)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return RecordRead(key, empty(application), f"{where} ({key}) is damaged (truncated or not JSON: {exc}); "
                          f"{fix}", "damaged", keys)
    bad = _check_shape(doc, application)
    if bad is not None:
        state, reason = bad
        what = "belongs to another repository" if state == "foreign" else "is damaged"
        return RecordRead(key, empty(application), f"{where} ({key}) {what}: {reason}; {fix}", state, keys)
    return RecordRead(key, _clean(doc), None, "ok", keys)


def apply(doc: dict[str, Any], *, at: datetime, read_data: bool, checked: list[str], failed: dict[str, list[str]],
          every: bool, by: str = "verify", existing: set[str] | None = None) -> dict[str, Any]:
    """The record after one verification (see the module docstring for the rules); ``doc`` is not changed.

    ``checked``: ids whose objects were all checked; ``failed``: id (or ``*``) -> problems found;
    ``existing``: ids with a manifest on the storage now (entries of others are dropped)."""
    out = json.loads(json.dumps(doc))
    stamp = _iso(at)
    verified: dict[str, Any] = out["verified"]
    open_: dict[str, Any] = out["open"]
    for sid in checked:
        if sid in failed:
            continue
        verified[sid] = {"at": stamp, "read_data": read_data, "by": by}
        old = open_.get(sid)
        if old is not None and (read_data or not old.get("read_data")):
            del open_[sid]
    if every and ALL not in failed and ALL in open_ and (read_data or not open_[ALL].get("read_data")):
        del open_[ALL]
    for sid, problems in failed.items():
        old = open_.get(sid) or {}
        open_[sid] = {"since": old.get("since") or stamp, "at": stamp, "read_data": read_data,
                      "problems": [str(p) for p in problems][:50]}
    if existing is not None:
        for part in (verified, open_):
            for sid in [s for s in part if s != ALL and s not in existing]:
                del part[sid]
    if by != "backup":
        n = sum(len(p) for p in failed.values())
        last = {"at": stamp, "ok": not failed, "read_data": read_data, "scope": "all" if every else "snapshots",
                "snapshots": sorted(checked)[-20:], "problems": n}
        out["last"] = last
        if every and read_data and not failed:
            out["last_read_data_ok"] = last
    out["written_at"] = stamp
    return out


def _stamp(key: str) -> datetime | None:
    """The UTC time a generation's key starts with (``.../<YYYYmmddTHHMMSSffffffZ>-...``), or None."""
    try:
        return datetime.strptime(key.rsplit("/", 1)[-1][:22], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def write(storage: Any, doc: dict[str, Any], previous: list[str], at: datetime | None = None) -> str:
    """Write ``doc`` as the newest generation, then remove all but the last :data:`KEEP` generations."""
    at = at or datetime.now(UTC)
    key = verification_key(at, doc.get("application"))
    if previous and key <= previous[-1]:  # a clock behind the newest generation: still sort after it
        newest = _stamp(previous[-1])
        if newest is not None and newest.year < 9999:  # one microsecond after it: the key keeps its length
            key = verification_key(newest + timedelta(microseconds=1), doc.get("application"))
        if key <= previous[-1]:  # a newest key that is no stamp (or the year 9999): 'z' sorts after '.' and digits
            key = f"{previous[-1][:-len('.json')]}z{uuid.uuid4().hex[:8]}.json"
    storage.put_bytes(key, json.dumps(doc, indent=1, sort_keys=True).encode())
    for old in [*previous, key][:-KEEP]:
        try:
            storage.delete(old)
        except Exception as exc:  # noqa: BLE001 - an old generation left behind is harmless
            log.warning("could not remove the old verification record %s on %s: %s", old, storage.name, exc)
    return key


def merge(ours: dict[str, Any], theirs: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``ours`` (written from ``base``) combined with ``theirs``, a generation another writer wrote meanwhile.

    Fail-safe: an open failure in either stays open, unless we closed it and theirs is the very entry we read
    (they only carried it over); per snapshot and for ``last`` the newer verification wins."""
    out = json.loads(json.dumps(ours))
    for sid, f in theirs.get("open", {}).items():
        if sid in out["open"]:
            continue
        if sid in base.get("open", {}) and base["open"][sid] == f:
            continue  # we closed it; they did not look at it again
        out["open"][sid] = f
    for sid, v in theirs.get("verified", {}).items():
        mine = out["verified"].get(sid)
        if mine is None or str(v.get("at")) > str(mine.get("at")):
            out["verified"][sid] = v
    for name in ("last", "last_read_data_ok"):
        t = theirs.get(name)
        if isinstance(t, dict) and (out.get(name) is None or str(t.get("at")) > str(out[name].get("at"))):
            out[name] = t
    return out


def record(storage: Any, application: str | None, *, read_data: bool, checked: list[str],
           failed: dict[str, list[str]], every: bool, by: str = "verify", existing: set[str] | None = None,
           at: datetime | None = None, legacy: dict[str, Any] | None = None) -> str | None:
    """Read, apply one verification, write. A damaged record is replaced only by a verification of everything
    with read_data; otherwise it is left as it is (the problem stays visible) and None is returned."""
    at = at or datetime.now(UTC)
    cur = read(storage, application, legacy)
    if cur.problem is not None:
        if not (every and read_data and by == "verify"):
            log.warning("%s: not updated (%s)", cur.problem.split(";")[0], "a `verify --all --read-data` replaces it")
            return None
        base = empty(application)
    else:
        base = cur.doc
        base["application"] = application or base.get("application")
    doc = apply(base, at=at, read_data=read_data, checked=checked, failed=failed, every=every, by=by,
                existing=existing)
    key = write(storage, doc, cur.generations, at)
    # another writer (a verify and a backup's check on the same storage) may have written a generation after we
    # read ours: fold it in, so that no open failure is lost to the race (a few rounds at most)
    seen = {*cur.generations, key}
    for _ in range(3):
        try:
            now_keys = _generations(storage, application)
        except Exception:  # noqa: BLE001 - our generation is written; the next writer folds the rest in
            return key
        others = [k for k in now_keys if k not in seen and (cur.key is None or k > cur.key)]
        if not others:
            return key
        for other in others:
            seen.add(other)
            theirs = _read_key(storage, other, application)
            if theirs is not None:
                doc = merge(doc, theirs, base)
        key = write(storage, doc, now_keys, at)
        seen.add(key)
    return key


def _read_key(storage: Any, key: str, application: str | None) -> dict[str, Any] | None:
    """One generation, or None when it is not a usable record of ``application``."""
    try:
        with storage.open_read(key) as fh:
            doc = json.loads(fh.read(MAX_BYTES + 1).decode("utf-8"))
    except Exception:  # noqa: BLE001 - a damaged concurrent generation: ours stands
        return None
    return doc if _check_shape(doc, application) is None else None
