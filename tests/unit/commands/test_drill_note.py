"""The ``dr_drill`` run's note (issue 20): the verdict and its cause on the first line, then Markdown bullets —
RTO/RPO per tier against the targets, the findings, the report — no code blocks, within Airflow's 1000 characters."""

from __future__ import annotations

from backups.commands.drill import drill_note


def _verdict(passed: bool, findings: list[str]) -> dict:
    tiers = [
        {"tier": "daily", "storage": "s3", "snapshot_id": "daily-20261207T010000Z", "restored": True,
         "checks_passed": passed, "rto_seconds": 95.0, "rto_ok": True, "rpo_seconds": 7200.0, "passed": passed},
        {"tier": "weekly", "storage": "s3", "snapshot_id": None, "restored": False, "checks_passed": False,
         "rto_seconds": None, "rto_ok": False, "rpo_seconds": None, "passed": False} if not passed else
        {"tier": "weekly", "storage": "s3", "snapshot_id": "weekly-20261206T010000Z", "restored": True,
         "checks_passed": True, "rto_seconds": 4000.0, "rto_ok": False, "rpo_seconds": 30 * 3600.0, "passed": False},
    ]
    return {"drill_id": "drill-20261207T040000Z", "passed": passed, "targets": {"rto_minutes": 60, "rpo_hours": 26},
            "rto_seconds": 95.0, "rpo_seconds": 7200.0, "tiers": tiers, "findings": findings,
            "reports": {"md": "/r/drill/drill-20261207T040000Z.md", "html": "/r/drill/drill-20261207T040000Z.html"}}


def test_a_passed_drill_note_gives_the_verdict_then_each_tier_against_the_targets():
    v = _verdict(True, [])
    note = drill_note(v)
    first, blank, *bullets = note.splitlines()
    assert first.startswith("**Drill `drill-20261207T040000Z` passed** — 2 tier(s) restored") and blank == ""
    assert all(b.startswith(("* ", "  * ")) for b in bullets) and "```" not in note
    assert "* targets: RTO 1h 00m per tier, RPO 1d 2h" in note  # the one unit system
    assert "* `daily` (`daily-20261207T010000Z` from `s3`): RTO 1m 35s ✓ · RPO 2h 00m ✓ · checks passed" in note
    assert "* `weekly` (`weekly-20261206T010000Z` from `s3`): RTO 1h 06m ✗ · RPO 1d 6h ✗" in note
    assert note.endswith("* report: `/r/drill/drill-20261207T040000Z.html`")
    assert drill_note(v, link="https://af/backups/drill/latest").endswith(
        "* report: [drill-20261207T040000Z](https://af/backups/drill/latest)")


def test_a_failed_drill_note_names_the_cause_first_and_lists_the_findings_within_the_limit():
    findings = [f"weekly: restore of snapshot weekly-x failed: object {i} damaged " + "x" * 300 for i in range(9)]
    note = drill_note(_verdict(False, findings))
    first = note.splitlines()[0]
    assert first.startswith("**Drill `drill-20261207T040000Z` FAILED** — weekly: restore of snapshot weekly-x failed")
    assert first.endswith("(+8 more finding(s))") and len(first) < 320
    assert "* `weekly`: **not restored** (see the findings)" in note
    assert "* findings (9):" in note and "more: see the report" in note  # as many as fit, never cut mid-line
    assert len(note) <= 1000 and "```" not in note
