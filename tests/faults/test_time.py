"""Time faults (issue 16): a host whose clock is behind, a clock or a --logical-date in the future, and what
retention, ``latest`` and the parent of the next backup make of them. The wrong clocks are real ones: the CLI
runs under ``faketime`` (libfaketime, Debian package ``faketime``), everything else on the true clock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import make_app, subprocess_env

pytestmark = pytest.mark.skipif(shutil.which("faketime") is None, reason="needs faketime (apt-get install faketime)")

CLI = [sys.executable, "-c", "import sys; from backups.cli import main; sys.exit(main(sys.argv[1:]))"]


def ctl(app, *args, clock: str | None = None) -> subprocess.CompletedProcess:
    """``backupctl --config <app> ARGS`` as a process; ``clock``: a faketime spec (``-1h``, ``@2062-01-03 02:00:00``)."""
    fake = ["faketime", "-f", clock] if clock else []
    return subprocess.run([*fake, *CLI, "--config", str(app["config_path"]), *args], capture_output=True, text=True,
                          env=subprocess_env(TZ="UTC"), timeout=300)


def _set_retention(app, tier: str, retention: str) -> None:
    path = app["config_path"]
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line.replace("storages: [local]}", f"storages: [local], retention: {retention}}}")
                            if line.startswith(f"  {tier}:") else line for line in lines))


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path, scale=0.1, seed=16)


def test_a_host_whose_clock_is_an_hour_behind_builds_on_the_newest_data(app, tmp_path):
    """Before: the daily got an id older than the weekly, was promoted to full without a word, and `restore
    latest` returned the weekly's (older) data."""
    p = ctl(app, "backup", "--no-validate", "--tier", "weekly", "--json")
    assert p.returncode == 0, p.stderr
    weekly = json.loads(p.stdout)["id"]
    changed = app["home"] / "config" / "app.yaml"
    changed.write_text("changed after the weekly\n")
    p = ctl(app, "backup", "--no-validate", "--tier", "daily", "--json", clock="-1h")
    assert p.returncode == 0, p.stderr
    daily = json.loads(p.stdout)
    assert daily["id"] < weekly.replace("weekly", "daily")  # its id is an hour older ...
    assert (daily["type"], daily["parent"]) == ("incremental", weekly)  # ... but it builds on the newest data
    assert len(daily["warnings"]) == 1 and weekly in daily["warnings"][0] and "clock" in daily["warnings"][0]
    shown = json.loads(ctl(app, "show", daily["id"], "--json").stdout)
    assert shown["warnings"] == daily["warnings"] and shown["sequence"] == 2  # in the manifest too
    p = ctl(app, "show", "latest", "--json")
    assert json.loads(p.stdout)["id"] == daily["id"]
    target = tmp_path / "restored"
    p = ctl(app, "restore", "latest", "--target", str(target), "--no-validate")
    assert p.returncode == 0, p.stderr
    assert (target / "app_files" / "config" / "app.yaml").read_text() == "changed after the weekly\n"


def test_the_text_output_of_a_skewed_backup_warns(app):
    assert ctl(app, "backup", "--no-validate", "--tier", "weekly").returncode == 0
    p = ctl(app, "backup", "--no-validate", "--tier", "daily", clock="-1h")
    assert p.returncode == 0, p.stderr
    assert "warning: logical date" in p.stderr and "clock of this host may be behind" in p.stderr


def test_a_logical_date_in_the_future_is_refused_naming_it_and_now(app):
    p = ctl(app, "backup", "--no-validate", "--tier", "daily", "--logical-date", "2062-01-03T02:00:00Z")
    assert p.returncode == 2, p.stderr
    assert "2062-01-03T02:00:00+00:00" in p.stderr and f"now {datetime.now(UTC):%Y-%m-%d}" in p.stderr
    assert "fix:" in p.stderr and "Traceback" not in p.stderr
    assert not list((app["root"]).rglob("*.json"))  # nothing written, no snapshot


def test_a_snapshot_from_a_clock_in_the_future_never_makes_prune_forget_the_real_ones(app):
    """Before: with keep_within_days 7, the window counted back from the 2062 snapshot and the prune forgot every
    real snapshot of the tier, including one taken after it."""
    _set_retention(app, "daily", "{keep_within_days: 7}")
    today = datetime.now(UTC).replace(microsecond=0)
    real = [today - timedelta(days=2), today - timedelta(days=1)]
    for when in real:
        assert ctl(app, "backup", "--no-validate", "--tier", "daily", "--logical-date", when.isoformat()).returncode == 0
    p = ctl(app, "backup", "--no-validate", "--tier", "daily", "--json", clock="@2062-01-03 02:00:00")  # a clock that ran ahead
    assert p.returncode == 0, p.stderr
    typo = json.loads(p.stdout)["id"]
    assert typo.startswith("daily-20620103T0200")
    assert ctl(app, "backup", "--no-validate", "--tier", "daily").returncode == 0  # taken after it, on the true clock
    before = {s["id"] for s in json.loads(ctl(app, "list", "--json").stdout)["snapshots"]}
    assert len(before) == 4 and typo in before
    p = ctl(app, "prune", "--json")
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)["storages"][0]
    assert plan["forget"] == [] and sorted(plan["keep"]) == sorted(before)
    assert len(plan["warnings"]) == 1 and typo in plan["warnings"][0] and "future" in plan["warnings"][0]
    p = ctl(app, "prune", "-v")
    assert p.returncode == 0 and f"WARNING snapshot {typo}" in p.stdout, p.stdout + p.stderr
    assert {s["id"] for s in json.loads(ctl(app, "list", "--json").stdout)["snapshots"]} == before


def test_a_snapshot_from_a_clock_in_the_future_never_makes_a_stale_tier_look_fresh(app):
    """Before: status took the newest snapshot by logical date and its age from its (2062) commit time, so a tier
    whose real backups had stopped showed fresh for 36 years."""
    p = ctl(app, "backup", "--no-validate", "--tier", "daily", "--json", clock="-4d")  # the last real backup, four days ago
    assert p.returncode == 0, p.stderr
    real = json.loads(p.stdout)["id"]
    p = ctl(app, "backup", "--no-validate", "--tier", "daily", "--json", clock="@2062-01-03 02:00:00")
    assert p.returncode == 0, p.stderr
    typo = json.loads(p.stdout)["id"]
    p = ctl(app, "status", "--json")
    doc = json.loads(p.stdout)
    daily = next(t for t in doc["tiers"] if t["tier"] == "daily")
    assert daily["newest_id"] == real and daily["future_dated"] == [typo]
    assert daily["freshness"] != "ok" and daily["age_seconds"] > 3 * 86400
    keys = {pr["key"] for pr in doc["problems"]}
    assert {"stale:daily", "future-dated:daily"} <= keys, keys
    p = ctl(app, "status", "--check")
    assert p.returncode == 2 and p.stdout.startswith("BACKUP CRITICAL"), p.stdout


@pytest.mark.parametrize("date", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_logical_date_with_no_utc_equivalent_is_refused_without_a_traceback(app, date):
    """Before: an OverflowError traceback (exit 1)."""
    p = ctl(app, "backup", "--no-validate", "--tier", "weekly", "--logical-date", date)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert date in p.stderr and "out of range" in p.stderr and "fix:" in p.stderr
    assert not list((app["root"]).rglob("*.json"))  # nothing written


def test_a_backfill_before_year_1000_is_a_usable_snapshot_not_a_corrupt_manifest(app, tmp_path):
    """Before: the id was ``weekly-9990601T000000Z`` (``%Y`` is not zero-padded), which the catalog refuses: the
    backup committed a manifest, then failed reading it back (exit 7), and the storage had a CORRUPT snapshot."""
    p = ctl(app, "backup", "--no-validate", "--tier", "weekly", "--logical-date", "0999-06-01T00:00:00Z", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["id"] == "weekly-09990601T000000Z"
    listed = json.loads(ctl(app, "list", "--json").stdout)
    assert "CORRUPT" not in json.dumps(listed) and "weekly-09990601T000000Z" in json.dumps(listed)
    p = ctl(app, "restore", "latest", "--target", str(tmp_path / "restored"), "--no-validate")
    assert p.returncode == 0, p.stderr
    assert ctl(app, "prune").returncode == 0


def test_a_verification_dated_in_the_future_never_counts_as_recent(app):
    """A ``verify --all --read-data`` on a host whose clock was 300 days ahead. Before: its record kept every tier
    "verified" (and the storage's read-data verification recent) until that date had passed plus the window — 100
    days later, with no verification since, the weekly still showed verification OK and no verify-overdue."""
    assert ctl(app, "backup", "--no-validate", "--tier", "weekly").returncode == 0
    p = ctl(app, "verify", "--all", "--read-data", clock="+300d")
    assert p.returncode == 0, p.stderr
    p = ctl(app, "status", "--json", clock="+100d")
    doc = json.loads(p.stdout)
    weekly = next(t for t in doc["tiers"] if t["tier"] == "weekly")
    assert weekly["verification"]["state"] == "never", weekly["verification"]
    keys = {pr["key"] for pr in doc["problems"]}
    assert {"unverified:weekly", "verify-overdue:local"} <= keys, keys
    # a verification on the right clock counts again
    assert ctl(app, "verify", "--all", "--read-data").returncode == 0
    doc = json.loads(ctl(app, "status", "--json").stdout)
    assert next(t for t in doc["tiers"] if t["tier"] == "weekly")["verification"]["state"] == "ok"
    assert not {"unverified:weekly", "verify-overdue:local"} & {pr["key"] for pr in doc["problems"]}
