"""The verification record (:mod:`backups.repository.verification`): its rules (what closes an open failure,
what a backup's own check may record), its generations, and a reader that never raises — whatever bytes or JSON
the newest generation holds, it is a usable record or a named problem (property-tested)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backups.repository import verification
from backups.storage.memory import MemoryStorage


def test_a_backup_check_records_only_its_own_snapshot():
    at = datetime(2026, 12, 1, tzinfo=UTC)
    doc = verification.apply(verification.empty("app"), at=at, read_data=True, checked=[],
                             failed={"weekly-1": ["weekly-1: x: SHA-256 mismatch"], "*": ["snapshots/y.json: damaged"]},
                             every=True)
    after = verification.apply(doc, at=at + timedelta(hours=1), read_data=True, checked=["weekly-1", "daily-2"],
                               failed={}, every=False, by="backup")
    # recorded as a backup check: the open failures of others are not its business (checked is its own id only
    # in practice; even when told more, it never touches `last`)
    assert after["last"] == doc["last"] and "*" in after["open"]
    structure = verification.apply(doc, at=at + timedelta(hours=2), read_data=False, checked=["weekly-1"], failed={},
                                   every=True)
    assert "weekly-1" in structure["open"] and "*" in structure["open"]  # found by re-hashing: a re-hash closes it
    full = verification.apply(doc, at=at + timedelta(hours=3), read_data=True, checked=["weekly-1"], failed={},
                              every=True)
    assert full["open"] == {} and full["last_read_data_ok"]["at"] == full["last"]["at"]
    assert structure["open"]["weekly-1"]["since"] == doc["open"]["weekly-1"]["since"]  # since stays


# ------------------------------------------------------------------------------------------ the reader
def _store(raw: bytes) -> MemoryStorage:
    s = MemoryStorage("mem")
    s.put_bytes("verification/app/20261201T000000000000Z-aaaaaaaa.json", raw)
    return s


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_the_record_reader_never_raises_on_any_bytes(raw):
    rec = verification.read(_store(raw), "app")
    assert rec.state in ("ok", "damaged", "foreign")
    assert (rec.problem is None) == (rec.state == "ok")
    if rec.problem:
        assert "verify --all --read-data" in rec.problem and rec.doc["open"] == {}


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=10)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["verified", "open", "last", "last_read_data_ok", "x"]), _json, max_size=4))
def test_a_record_of_the_wrong_shape_is_a_problem_never_a_crash(parts):
    doc = {**verification.empty("app"), **parts}
    rec = verification.read(_store(json.dumps(doc).encode()), "app")
    if rec.problem is None:  # usable: then everything the monitoring reads has its type
        assert all(isinstance(v, dict) for v in rec.doc["verified"].values())
        assert all(isinstance(v.get("problems"), list) for v in rec.doc["open"].values())
    else:
        assert rec.state == "damaged"


def test_generations_sort_and_only_the_last_few_are_kept():
    s = MemoryStorage("mem")
    at = datetime(2026, 12, 1, tzinfo=UTC)
    for i in range(6):
        verification.record(s, "app", read_data=True, checked=[f"weekly-{i}"], failed={}, every=False,
                            at=at + timedelta(seconds=i), existing={f"weekly-{j}" for j in range(6)})
    keys = [i.key for i in s.list("verification/")]
    assert len(keys) == verification.KEEP and keys == sorted(keys)
    assert sorted(verification.read(s, "app").doc["verified"]) == [f"weekly-{i}" for i in range(6)]
    # a clock behind the newest generation still writes one that sorts after it
    verification.record(s, "app", read_data=True, checked=["weekly-9"], failed={}, every=False,
                        at=at - timedelta(days=1), existing={"weekly-9"})
    assert list(verification.read(s, "app").doc["verified"]) == ["weekly-9"]


def test_writes_behind_a_future_generation_keep_keys_short(tmp_path):
    """One generation written by a host whose clock ran ten years ahead. Before: every later write (the clock now
    behind it) appended "z<token>" to the newest key, 9 characters a time, until after about 25 writes the name
    passed the file system's 255 and no verification or backup could record anything again ("File name too
    long"; 1,024 on S3)."""
    from backups.storage.local import LocalStorage

    s = LocalStorage(tmp_path / "repo", "local")
    at = datetime(2026, 12, 1, tzinfo=UTC)
    verification.record(s, "app", read_data=True, checked=["weekly-0"], failed={}, every=False,
                        at=at + timedelta(days=3650), existing={"weekly-0"})
    for i in range(1, 60):
        key = verification.record(s, "app", read_data=True, checked=[f"weekly-{i}"], failed={}, every=False,
                                  at=at + timedelta(minutes=i), existing={f"weekly-{j}" for j in range(i + 1)})
        assert key is not None and len(key.rsplit("/", 1)[1]) <= 60, (i, key)
        keys = sorted(i.key for i in s.list("verification/"))
        assert keys[-1] == key  # still the newest generation
    assert sorted(verification.read(s, "app").doc["verified"]) == sorted(f"weekly-{i}" for i in range(60))


class _Racing(MemoryStorage):
    """A storage on which another writer slips its generation in right before our first write of a record."""

    def __init__(self, competitor) -> None:
        super().__init__("mem")
        self.competitor = competitor

    def put_bytes(self, key: str, data: bytes) -> None:
        if key.startswith("verification/") and self.competitor is not None:
            run, self.competitor = self.competitor, None
            run(self)
        super().put_bytes(key, data)


def test_a_concurrent_writer_never_loses_an_open_failure():
    at = datetime(2026, 12, 1, tzinfo=UTC)
    ids = {"weekly-1", "daily-2"}

    def verify_all(s):  # e.g. `backupctl verify --all --read-data` finishing while a backup's check writes
        verification.record(s, "app", read_data=True, checked=["daily-2"],
                            failed={"weekly-1": ["weekly-1: data/weekly-1/a: SHA-256 mismatch"]}, every=True,
                            at=at + timedelta(seconds=1), existing=ids)

    s = _Racing(verify_all)
    verification.record(s, "app", read_data=True, checked=["daily-2"], failed={}, every=False, by="backup", at=at,
                        existing=ids)
    doc = verification.read(s, "app").doc
    assert "weekly-1" in doc["open"] and doc["last"]["ok"] is False  # the verify's failure survived the race
    assert doc["verified"]["daily-2"]["at"] == "2026-12-01T00:00:01+00:00"  # the newer verification of daily-2

    # the other way round: a failure we close is not resurrected by a writer that merely carried it over
    s2 = MemoryStorage("mem")
    verification.record(s2, "app", read_data=True, checked=[], failed={"weekly-1": ["x"]}, every=False, at=at,
                        existing=ids)
    carried = _Racing(None)
    carried.objects, carried.mtimes = dict(s2.objects), dict(s2.mtimes)
    carried.competitor = lambda st: verification.record(st, "app", read_data=True, checked=["daily-2"], failed={},
                                                         every=False, by="backup", at=at + timedelta(seconds=1),
                                                         existing=ids)
    verification.record(carried, "app", read_data=True, checked=["weekly-1"], failed={}, every=True,
                        at=at + timedelta(seconds=2), existing=ids)
    doc = verification.read(carried, "app").doc
    assert doc["open"] == {} and set(doc["verified"]) == ids


def test_a_hostile_record_cannot_drive_the_terminal_or_smuggle_ids():
    doc = verification.empty("app")
    doc["open"] = {"weekly-1": {"since": "x", "at": "x", "read_data": True,
                                "problems": ["\x1b[2J\x1b]0;owned\x07 data/weekly-1/a: missing" + "x" * 2000]}}
    rec = verification.read(_store(json.dumps(doc).encode()), "app")
    assert rec.problem is None
    [text] = rec.doc["open"]["weekly-1"]["problems"]
    assert "\x1b" not in text and "\x07" not in text and len(text) == 500
    doc["open"]["../../etc\x1b"] = doc["open"].pop("weekly-1")
    rec = verification.read(_store(json.dumps(doc).encode()), "app")
    assert rec.state == "damaged" and "not a snapshot id" in rec.problem and "\x1b" not in rec.problem.split("holds")[0]


def test_applications_sharing_a_storage_keep_one_record_each():
    s = MemoryStorage("shared")
    at = datetime(2026, 12, 1, tzinfo=UTC)
    verification.record(s, "app-a", read_data=True, checked=[], failed={"weekly-1": ["x"]}, every=False, at=at,
                        existing={"weekly-1"})
    verification.record(s, "app-b", read_data=True, checked=["daily-1"], failed={}, every=False,
                        at=at + timedelta(seconds=1), existing={"daily-1"})
    a, b = verification.read(s, "app-a"), verification.read(s, "app-b")
    assert a.problem is None and b.problem is None  # the other's newer record is not "foreign"
    assert list(a.doc["open"]) == ["weekly-1"] and b.doc["open"] == {} and list(b.doc["verified"]) == ["daily-1"]
    assert {k.key.split("/")[1] for k in s.list("verification/")} == {"app-a", "app-b"}


def test_a_hostile_record_cannot_drive_the_terminal_through_its_dates_or_bidi_controls():
    """Before: only ``problems`` were cleaned; ``since`` and ``at`` of an open failure went as they were into the
    ``verify-failed`` summary `backupctl status` prints (an escape sequence clearing the screen, a fake "OK"), and
    bidirectional overrides (U+202E) were kept in problems."""
    doc = verification.empty("app")
    doc["open"] = {"weekly-1": {"since": "\x1b[2J\x1b[1;1HBACKUP OK" + "y" * 1000, "at": ["x"], "read_data": True,
                                "problems": ["data/weekly-1/\u202ekcatta: missing"]}}
    rec = verification.read(_store(json.dumps(doc).encode()), "app")
    assert rec.problem is None
    entry = rec.doc["open"]["weekly-1"]
    assert "\x1b" not in entry["since"] and len(entry["since"]) <= 40 and entry["at"] is None
    assert "\u202e" not in entry["problems"][0]
