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


def submit_trigger(page, dialog, dag_id: str) -> None:
    """Click the form's Trigger (asserting it is enabled: the finding of issue 11) and wait for the dialog to close."""
    button = dialog.get_by_role("button", name="Trigger", exact=True)
    assert button.is_enabled(), f"{dag_id}: Trigger is disabled with the form's defaults"
    button.click()
    dialog.wait_for(state="detached", timeout=120_000)


def newest_run_id(page, url: str, dag_id: str, timeout: float = 120.0) -> str:
    """The run id of the newest run, read from the DAG's *Runs* tab."""
    deadline = time.monotonic() + timeout
    while True:
        page.goto(f"{url}/dags/{dag_id}/runs")
        link = page.locator(f"a[href*='/dags/{dag_id}/runs/']").first
        try:
            link.wait_for(timeout=15_000)
            href = link.get_attribute("href") or ""
            m = re.search(rf"/dags/{dag_id}/runs/([^/?#]+)", href)
            if m:
                from urllib.parse import unquote

                return unquote(m.group(1))
        except Exception:  # noqa: BLE001 - not listed yet
            if time.monotonic() > deadline:
                raise
        time.sleep(2)


def approve(page, url: str, dag_id: str, run_id: str, task_id: str, shot, timeout: float = RUN_TIMEOUT) -> None:
    """Open the task's Required Actions view, wait until the approval is asked, click Approve once."""
    from urllib.parse import quote

    view = f"{url}/dags/{dag_id}/runs/{quote(run_id, safe='')}/tasks/{task_id}/required_actions"
    deadline = time.monotonic() + timeout
    while True:
        page.goto(view)
        button = page.get_by_role("button", name="Approve", exact=True)
        try:
            button.wait_for(timeout=15_000)
            break
        except Exception:  # noqa: BLE001 - the task has not reached the approval yet
            if time.monotonic() > deadline:
                shot("approval-never-asked")
                raise AssertionError(f"{dag_id}/{run_id}: no approval asked within {timeout:.0f} s") from None
    shot("approval-asked")
    assert button.is_enabled(), "Approve is disabled until a note is typed (the note must be optional)"
    button.click()
    page.get_by_role("button", name="Approve", exact=True).wait_for(state="detached", timeout=60_000)
    shot("approved")


def wait_for_run_state(page, url: str, dag_id: str, run_id: str, shot, timeout: float = RUN_TIMEOUT) -> str:
    """Reload the run's page until its state badge says success or failed; the state seen."""
    from urllib.parse import quote

    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        page.goto(f"{url}/dags/{dag_id}/runs/{quote(run_id, safe='')}")
        header = page.locator("main, body").first
        try:
            header.get_by_text(re.compile(r"^(success|failed)$", re.I)).first.wait_for(timeout=10_000)
            state = header.get_by_text(re.compile(r"^(success|failed)$", re.I)).first.inner_text().strip().lower()
            break
        except Exception:  # noqa: BLE001 - still running
            time.sleep(5)
    shot(f"run-{state or 'timeout'}")
    assert state is not None, f"{dag_id}/{run_id}: no final state within {timeout:.0f} s"
    return state


# ------------------------------------------------------------------------------------------------- tests
def test_restore_snapshot_with_only_a_target_and_one_click_approval(airflow_server, weekly_snapshot, page, shot,
                                                                   tmp_path):
    url, dag_id = airflow_server.url, "restore_snapshot"
    target = tmp_path / "restored"
    dialog = open_trigger_form(page, url, dag_id)
    dialog.locator("#element_target").fill(str(target))
    shot("trigger-form")
    submit_trigger(page, dialog, dag_id)
    run_id = newest_run_id(page, url, dag_id)

    approve(page, url, dag_id, run_id, "approve_restore", shot)
    assert wait_for_run_state(page, url, dag_id, run_id, shot) == "success"

    note = page.get_by_text(f"Restore of {weekly_snapshot}")
    note.first.wait_for()
    assert "verified" in note.first.inner_text()
    page.get_by_text("approval: Approve").first.wait_for()
    shot("run-note")
    assert (target / "RESTORE_REPORT.md").is_file()


def test_backup_manual_with_its_defaults_and_one_click_approval(airflow_server, page, shot):
    url, dag_id = airflow_server.url, "backup_manual"
    dialog = open_trigger_form(page, url, dag_id)
    shot("trigger-form")
    submit_trigger(page, dialog, dag_id)
    run_id = newest_run_id(page, url, dag_id)

    approve(page, url, dag_id, run_id, "approve_backup", shot)
    assert wait_for_run_state(page, url, dag_id, run_id, shot) == "success"

    note = page.get_by_text(re.compile(r"Backup manual-\d{8}T\d{6}Z"))
    note.first.wait_for()
    page.get_by_text("approval: Approve").first.wait_for()
    shot("run-note")
