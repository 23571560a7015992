"""``restore_snapshot`` in the UI as on-call engineers meet it (issue 20): a run left waiting for approval blocks
no other restore, and a rejected restore is a *failed* run whose note says nothing was restored.

Setup may use the REST API (the second restore is what the runbook's ``airflow dags trigger`` does); every
assertion is made on what the UI shows."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.browser.test_ui import RUN_TIMEOUT, approve, open_trigger_form, run_note, submit_trigger, wait_for_run_state

pytestmark = pytest.mark.timeout(900)


def test_a_restore_waiting_for_approval_blocks_no_other_and_a_rejected_one_fails_with_its_note(
        airflow_server, weekly_snapshot, page, shot, tmp_path):
    url, dag_id, api = airflow_server.url, "restore_snapshot", airflow_server.api
    waiting_target, other_target = tmp_path / "waits", tmp_path / "meanwhile"
    dialog = open_trigger_form(page, url, dag_id)
    dialog.locator("#element_target").fill(str(waiting_target))
    waiting = submit_trigger(page, dialog, dag_id)

    # the on-call's restore (approval off, from the runbook) runs to the end while the first one waits
    other = api.post(f"/api/v2/dags/{dag_id}/dagRuns",
                     {"logical_date": None, "conf": {"target": str(other_target), "require_approval": False,
                                                     "sources": ["app_db"]}})["dag_run_id"]
    assert wait_for_run_state(page, url, dag_id, other, shot) == "success"
    state = api.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(waiting, safe='')}/taskInstances/approve_restore")["state"]
    assert state in ("awaiting_input", "deferred", "running", "queued", "scheduled"), state
    assert (other_target / "RESTORE_REPORT.md").is_file()

    approve(page, api, url, dag_id, waiting, "approve_restore", shot, choice="Reject")
    assert wait_for_run_state(page, url, dag_id, waiting, shot, timeout=RUN_TIMEOUT) == "failed"
    text = run_note(page, "Rejected", shot)
    assert "Rejected by admin at " in text and "nothing was restored" in text, text
    assert not waiting_target.exists()
