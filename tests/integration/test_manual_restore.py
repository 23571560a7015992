"""Follow docs/format.md "Restoring by hand" literally: only tar, zstd and sha256sum (and a POSIX shell)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from backups.demo import fmr
from tests.helpers import ROOT, app_tree, db_rows, run_backup

DOC = ROOT / "docs" / "format.md"


def _doc_blocks() -> list[str]:
    text = DOC.read_text()
    section = text.split("## Restoring by hand", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def _hand_restore(repo: Path, snap: str, src: str, out: Path) -> None:
    manifest = json.loads((repo / "snapshots" / f"{snap}.json").read_text())
    extract, check = _doc_blocks()
    assert "<the chain, in order>" in extract
    script = extract.replace("<the chain, in order>", " ".join(manifest["chain"])) + "\n" + check
    env = {"REPO": str(repo), "SNAP": snap, "SRC": src, "OUT": str(out), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["sh", "-e", "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    # step 2 of the doc: objects match the manifest's sha256
    for sid in manifest["chain"]:
        m = json.loads((repo / "snapshots" / f"{sid}.json").read_text())
        for rec in m["sources"].values():
            for obj in filter(None, rec["objects"].values()):
                out_sum = subprocess.run(["sha256sum", str(repo / obj["key"])], capture_output=True, text=True).stdout
                assert out_sum.split()[0] == obj["sha256"]


def test_restore_by_hand_matches_live_data(app):
    home, repo = app["home"], app["root"] / "local"
    run_backup(app["cfg"], "weekly", logical_date="2026-05-03T01:00:00Z")
    fmr.mutate(home, seed=11)
    run_backup(app["cfg"], "daily", logical_date="2026-05-04T02:00:00Z")
    fmr.mutate(home, seed=12)
    diff, _ = run_backup(app["cfg"], "monthly", logical_date="2026-05-05T03:00:00Z")
    fmr.mutate(home, seed=13)
    last, _ = run_backup(app["cfg"], "daily", logical_date="2026-05-06T02:00:00Z")
    # full -> differential (on the full) -> incremental (on the differential): three archives to extract in order
    assert (diff.type, diff.parent, last.type, last.parent) == ("differential", "weekly-20260503T010000Z",
                                                                "incremental", diff.id)
    assert last.chain == ["weekly-20260503T010000Z", diff.id, last.id]
    out = app["tmp"] / "byhand"
    for src in ("app_files", "app_db", "system_state"):
        _hand_restore(repo, last.id, src, out)
    got = app_tree(out / "app_files")
    want = app_tree(home)
    # by hand, mtimes come back to the second: compare content, type and mode
    strip = lambda t: {k: v[:3] for k, v in t.items()}  # noqa: E731
    assert strip(got) == strip(want)
    assert db_rows(out / "app_db" / "app.db") == db_rows(home / "app.db")
    assert (out / "system_state" / "stdout").read_text() == "fmr-state\n"
