"""The shared run-note format (backups.commands.notes): the first line is the verdict and its cause in words, the
rest Markdown bullets — one fix per bullet, no code block for prose (issue 20, item 5)."""

from __future__ import annotations

from backups.commands.notes import compose, failure_note, parse_reason
from backups.errors import SystemStateError
from backups.orchestration.run_notes import MAX_NOTE, fit

ONE = str(SystemStateError(
    "system state check failed for the weekly backup (1 problem(s)):\n  - source app_db (sqlite): path "
    "/data/app.db does not exist\n    fix: fix sources.app_db.path",
    hint="fix the configuration or the host, then run the backup again (a DAG task: clear it)"))


def test_a_failed_check_names_its_cause_on_the_first_line():
    note = failure_note({"task_id": "pre_backup.check_system_state", "try_number": 1,
                         "reason": f"AirflowFailException: {ONE}"})
    head, _, body = note.partition("\n")
    assert head == ("**Failed**: system state check failed for the weekly backup: source app_db (sqlite): path "
                    "/data/app.db does not exist"), head
    assert "pre_backup.check_system_state" not in head and "AirflowFailException" not in note
    lines = body.strip().splitlines()
    assert "* fix: fix sources.app_db.path" in lines
    assert "* fix: fix the configuration or the host, then run the backup again (a DAG task: clear it)" in lines
    assert "* failed task: `pre_backup.check_system_state`" in lines
    assert "```" not in note


def test_several_problems_are_bullets_each_with_its_fix_nested():
    reason = str(SystemStateError(
        "system state check failed for the daily backup (2 problem(s)):\n  - source app_db (sqlite): path /a "
        "does not exist\n    fix: fix sources.app_db.path\n  - storage offsite (s3): unreachable: timed out\n"
        "    fix: check the connection aws_offsite", hint="retry later"))
    note = failure_note({"task_id": "pre_backup.check_system_state", "try_number": 3, "snapshot_id": "daily-1",
                         "map_index": None, "reason": reason})
    lines = note.splitlines()
    assert lines[0] == ("**Failed**: system state check failed for the daily backup: source app_db (sqlite): path "
                        "/a does not exist (and 1 more)")
    i = lines.index("* source app_db (sqlite): path /a does not exist")
    assert lines[i + 1] == "  * fix: fix sources.app_db.path"
    assert lines[i + 2] == "* storage offsite (s3): unreachable: timed out"
    assert lines[i + 3] == "  * fix: check the connection aws_offsite"
    assert "* fix: retry later" in lines
    assert "* failed task: `pre_backup.check_system_state` after 3 tries · snapshot `daily-1`" in lines


def test_a_plain_error_is_the_first_line_and_says_how_to_retry():
    note = failure_note({"task_id": "restore", "reason": "RefusedError: restore target /tmp/x is not empty"})
    assert note.splitlines()[0] == "**Failed**: restore target /tmp/x is not empty"
    assert note.endswith("clear the task to retry once the cause is fixed.")
    assert failure_note({"task_id": "t", "reason": None}).startswith("**Failed**: no reason recorded")


def test_parse_reason_keeps_continuation_lines_with_their_item():
    head, problems, rest = parse_reason("boom:\n  - first part\n    of the item\n    fix: do this\n  fix: overall")
    assert head == "boom:" and problems == [("first part of the item", ["fix: do this"])] and rest == ["fix: overall"]


def test_compose_and_fit_keep_the_first_line():
    note = compose("**OK** — all fine", ["one", ("two", ["two a", "two b"])], tail="end")
    assert note == "**OK** — all fine\n\n* one\n* two\n  * two a\n  * two b\n\nend"
    long = compose("**Warning** — 40 open problems", [f"problem {i} " + "x" * 60 for i in range(40)])
    cut = fit(long)
    assert len(cut) <= MAX_NOTE and cut.startswith("**Warning** — 40 open problems\n") and cut.endswith("…")
    assert "\n" not in compose("a\nmultiline\nhead").split("\n\n")[0]


def test_a_monitoring_note_states_the_state_and_lists_the_open_problems():
    from backups.commands.notes import monitoring_note

    status = {"state": "critical", "tiers": [{"tier": "daily"}], "problems": [
        {"key": "schedules-unverified", "severity": "warning", "summary": "schedules not verified", "runs": 1},
        {"key": "stale:monthly", "severity": "critical", "summary": "monthly: newest snapshot is 83 days old",
         "runs": 4}]}
    note = monitoring_note(status, "/backups/")
    lines = note.splitlines()
    assert lines[0] == "**CRITICAL** — 2 open problems"
    assert lines[2] == "* critical: `stale:monthly` — monthly: newest snapshot is 83 days old (open for 4 checks)"
    assert lines[3] == "* warning: `schedules-unverified` — schedules not verified"
    assert lines[-1] == "Details: [the Backups page](/backups/)."
    ok = monitoring_note({"state": "ok", "tiers": [{}, {}], "problems": []})
    assert ok.splitlines()[0].startswith("**OK** — no open problem: 2 tier(s)") and "\n* " not in ok
