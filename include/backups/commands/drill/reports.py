"""Step 6, the reports: written to :func:`~.common.drill_dir` with the history line, a copy stored on a storage,
old Data Docs pruned."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import Config
from ...errors import BackupError
from .common import atomic_write, drill_dir, first_line, log
from .judge import DrillVerdict
from .render import render_html, render_markdown

if TYPE_CHECKING:
    from ...storage import Resolver

HISTORY = "history.jsonl"
#: Great Expectations Data Docs (a few MB per database) are kept for this many of the newest drills
KEEP_DATA_DOCS = 12


def read_history(cfg: Config) -> list[dict[str, Any]]:
    """The drill history's records; a damaged line (bad byte, truncated) is skipped and logged, never fatal."""
    from ...monitoring.store import read_jsonl

    return read_jsonl(drill_dir(cfg) / HISTORY)


def write_reports(cfg: Config, verdict: DrillVerdict) -> DrillVerdict:
    """``<drill id>.md/.html/.json`` and ``latest.*`` (atomic replace) in :func:`drill_dir`, and one line in
    ``history.jsonl`` (a re-run of the same drill id rewrites its reports but adds no second line)."""
    out = drill_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    verdict.reports = {"dir": str(out), **{ext: str(out / f"{verdict.drill_id}.{ext}") for ext in ("md", "html", "json")}}
    earlier = read_history(cfg)
    # the monitoring status reads id, at, passed, rto_seconds, rpo_seconds and report: keep them stable
    line = {"id": verdict.drill_id, "at": verdict.at, "passed": verdict.passed, "rto_seconds": verdict.rto_seconds,
            "rpo_seconds": verdict.rpo_seconds, "report": verdict.reports["html"], **verdict.targets,
            "tiers": {t["tier"]: {"rto_seconds": t["rto_seconds"], "rpo_seconds": t["rpo_seconds"], "passed": t["passed"]}
                      for t in verdict.tiers}}
    history = [h for h in earlier if h.get("id") != verdict.drill_id] + [line]
    texts = {"md": render_markdown(verdict), "html": render_html(verdict, history),
             "json": json.dumps(verdict.to_dict(), indent=1, sort_keys=True, default=str) + "\n"}
    for ext, text in texts.items():
        atomic_write(out / f"{verdict.drill_id}.{ext}", text)
        atomic_write(out / f"latest.{ext}", text)
    if not any(h.get("id") == verdict.drill_id for h in earlier):
        from ...monitoring.store import append_jsonl  # after a torn last line, on a line of its own

        append_jsonl(out / HISTORY, line)
    prune_data_docs(out, [h["id"] for h in history])
    log.info("drill %s %s: report %s", verdict.drill_id, "PASSED" if verdict.passed else "FAILED", verdict.reports["md"])
    return verdict


def store_reports(cfg: Config, verdict: DrillVerdict, resolver: Resolver | None = None) -> list[str]:
    """A copy of the reports in the repository of the first writable, non-archive storage other than the drills'
    storages (and other than the local storage :func:`drill_dir` already lives in): ``reports/drill/<id>.*``.
    Existing objects are never overwritten (a re-run of the same drill id keeps the first copy). Problems are
    logged and returned as ``storage: problem``; they never fail the drill."""
    from ...storage import open_storage

    drilled = {t["storage"] for t in verdict.tiers}
    here = drill_dir(cfg).resolve()
    for name, sc in cfg.storages.items():
        if name in drilled or getattr(sc, "storage_class", "STANDARD") in ("GLACIER", "DEEP_ARCHIVE"):
            continue
        if sc.type == "local" and here.is_relative_to(Path(sc.path).resolve()):
            continue
        stored: list[str] = []
        try:
            st = open_storage(cfg, name, resolver)
            for ext in ("md", "html", "json"):
                key = f"reports/drill/{verdict.drill_id}.{ext}"
                if not st.exists(key):
                    st.put_bytes(key, Path(verdict.reports[ext]).read_bytes())
                stored.append(f"{name}:{key}")
        except (BackupError, OSError) as exc:
            log.warning("drill %s: could not store its reports on storage %s: %s", verdict.drill_id, name, exc)
            return [f"{name}: {first_line(exc)}"]
        log.info("drill %s: reports also stored on %s", verdict.drill_id, ", ".join(stored))
        return stored
    return []


def prune_data_docs(directory: Path, ids: list[str], keep: int = KEEP_DATA_DOCS) -> list[str]:
    """Remove the Data Docs folders of all but the ``keep`` newest drills (the reports themselves stay)."""
    kept = set(sorted(ids)[-keep:])
    removed = []
    for d in directory.glob("drill-*.datadocs"):
        if d.is_dir() and not d.is_symlink() and d.name.removesuffix(".datadocs") not in kept:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed
