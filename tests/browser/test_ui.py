"""The project's DAGs through the Airflow UI in a real browser (see conftest.py for the server and fixtures).

Each test works like an operator: open the DAG, *Trigger*, fill in only what the form asks for, approve in the
task's *Required Actions* view with one click, wait for the run to succeed and read the run's note. Setup (a
snapshot to restore) may use the CLI; every assertion is made on what the UI shows."""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.timeout(900)

RUN_TIMEOUT = 420.0  # seconds for one run on a loaded 2-core machine (a backup runs GX once: ~30-60 s idle)
APPROVAL_PAUSE = 20  # seconds between the approval showing and the click (see approve())


def test_dags_list_shows_the_project_dags(airflow_server, page, shot):
    page.goto(airflow_server.url + "/dags")
    for dag_id in ("backup_manual", "restore_snapshot", "backup_daily"):
        page.get_by_role("link", name=dag_id, exact=True).first.wait_for()
    shot("dags")


# ------------------------------------------------------------------------------------------------- helpers
def open_trigger_form(page, url: str, dag_id: str):
    page.goto(f"{url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.locator("[role=dialog][data-state=open]")
    dialog.get_by_text(f"Trigger Dag - {dag_id}").wait_for()
    return dialog


def submit_trigger(page, dialog, dag_id: str) -> str:
    """Click the form's Trigger (asserting it is enabled: the finding of issue 11); the UI then opens the new
    run's page: its run id."""
    from urllib.parse import unquote

    button = dialog.get_by_role("button", name="Trigger", exact=True)
    assert button.is_enabled(), f"{dag_id}: Trigger is disabled with the form's defaults"
    button.click()
    page.wait_for_url(re.compile(rf"/dags/{dag_id}/runs/[^/?#]+"), timeout=120_000)
    return unquote(re.search(rf"/dags/{dag_id}/runs/([^/?#]+)", page.url).group(1))


def approve(page, api, url: str, dag_id: str, run_id: str, task_id: str, shot,
            timeout: float = RUN_TIMEOUT, choice: str = "Approve") -> None:
    """Open the task's Required Actions view, wait until the approval can be given, click Approve (or
    ``choice``) once.

    The UI shows the Approve button as soon as the task has written its question, but keeps it disabled until the
    task instance is ``deferred`` / ``awaiting_input`` (Airflow 3.3's HITL form: ``disabled = !(state in
    (deferred, awaiting_input)) || response_received``), which on a loaded machine can be seconds later. So the
    task's state is read (REST) before each load of the view: a button still disabled on a view loaded while the
    task was already waiting means the form treats the optional note as required (issue 11's finding)."""
    from urllib.parse import quote

    view = f"{url}/dags/{dag_id}/runs/{quote(run_id, safe='')}/tasks/{task_id}/required_actions"
    ti_path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
    deadline = time.monotonic() + timeout
    asked = False
    while True:
        state = api.get(ti_path).get("state")
        page.goto(view)
        button = page.get_by_role("button", name=choice, exact=True)
        try:
            button.wait_for(timeout=15_000)
        except Exception:  # noqa: BLE001 - the task has not reached the approval yet
            pass
        else:
            if not asked:
                shot("approval-asked")
                asked = True
            page.wait_for_timeout(2_000)  # the form renders its params, then settles the button's state
            if button.is_enabled():
                break
            if state in ("deferred", "awaiting_input"):
                shot("approval-disabled")
                raise AssertionError(f"{dag_id}/{run_id}: {choice} is disabled while {task_id} is {state}: the form "
                                     "treats a param as required (the approval note must be optional)")
        if time.monotonic() > deadline:
            shot("approval-never-asked")
            raise AssertionError(f"{dag_id}/{run_id}: {task_id} did not ask for approval within {timeout:.0f} s "
                                 f"(its state: {state})")
        time.sleep(3)
    # Airflow 3.3.2 race: an answer given while the paused task's worker process is still winding down (~5-10 s
    # after "Awaiting Input" shows on a loaded machine) makes the scheduler see that worker's exit as a state
    # changed externally and put the resumed task up for retry (then it asks again). A person never answers
    # that fast; the test waits like one.
    page.wait_for_timeout(APPROVAL_PAUSE * 1000)
    button.click()
    from playwright.sync_api import expect

    expect(button).to_be_disabled(timeout=60_000)  # answered: the options stay, greyed out
    shot("approved")


def run_state(page, run_id: str) -> str | None:
    """The state badge next to the run's title on its page (not a task's state in the table below)."""
    for title in page.get_by_text(run_id, exact=True).all():
        for up in ("xpath=..", "xpath=../.."):
            m = re.search(r"\b(Success|Failed|Running|Queued)\b", title.locator(up).inner_text())
            if m:
                return m.group(1).lower()
    return None


def wait_for_run_state(page, url: str, dag_id: str, run_id: str, shot, timeout: float = RUN_TIMEOUT) -> str:
    """Reload the run's page until its state badge says success or failed; the state seen."""
    from urllib.parse import quote

    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        page.goto(f"{url}/dags/{dag_id}/runs/{quote(run_id, safe='')}")
        try:
            page.get_by_text(run_id, exact=True).first.wait_for(timeout=15_000)
            page.wait_for_timeout(1_000)  # the badge renders with the run's details
            state = run_state(page, run_id)
        except Exception:  # noqa: BLE001 - a slow page: try again
            state = None
        if state in ("success", "failed"):
            break
        time.sleep(5)
    shot(f"run-{state or 'timeout'}")
    assert state in ("success", "failed"), f"{dag_id}/{run_id}: no final state within {timeout:.0f} s (last: {state})"
    return state


def run_note(page, first_words: str, shot) -> str:
    """The run's note as the UI shows it: its first line on the run page, the whole note (rendered Markdown) in
    the "Dag Run Note" dialog the pencil ("Edit note") opens; closed again without editing."""
    page.get_by_text(first_words).first.wait_for()
    edit = page.get_by_role("button", name="Edit note")
    if not edit.count():
        edit = page.get_by_label("Edit note")
    edit.first.click()
    dialog = page.locator("[role=dialog][data-state=open]")
    dialog.get_by_text("Dag Run Note").wait_for()
    dialog.get_by_text(first_words).first.wait_for()
    text = dialog.inner_text()
    shot("run-note")
    page.keyboard.press("Escape")
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------- tests
def test_restore_snapshot_with_only_a_target_and_one_click_approval(airflow_server, weekly_snapshot, page, shot,
                                                                   tmp_path):
    url, dag_id = airflow_server.url, "restore_snapshot"
    target = tmp_path / "restored"
    dialog = open_trigger_form(page, url, dag_id)
    dialog.locator("#element_target").fill(str(target))
    shot("trigger-form")
    run_id = submit_trigger(page, dialog, dag_id)
    shot("triggered")

    approve(page, airflow_server.api, url, dag_id, run_id, "approve_restore", shot)
    assert wait_for_run_state(page, url, dag_id, run_id, shot) == "success"

    text = run_note(page, f"Restore of {weekly_snapshot}", shot)
    assert "verified" in text and str(target) in text and "approval: approved by admin" in text, text
    assert (target / "RESTORE_REPORT.md").is_file()


def test_backup_manual_with_its_defaults_and_one_click_approval(airflow_server, page, shot):
    url, dag_id = airflow_server.url, "backup_manual"
    dialog = open_trigger_form(page, url, dag_id)
    shot("trigger-form")
    run_id = submit_trigger(page, dialog, dag_id)
    shot("triggered")

    approve(page, airflow_server.api, url, dag_id, run_id, "approve_backup", shot)
    assert wait_for_run_state(page, url, dag_id, run_id, shot) == "success"

    text = run_note(page, "Backup manual-", shot)
    assert re.search(r"Backup manual-\d{8}T\d{6}Z", text) and "approval: approved by admin" in text, text
    assert "Great Expectations" in text, text
