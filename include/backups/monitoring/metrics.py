"""Prometheus metrics from the monitoring status document (text exposition format 0.0.4).

Two readers use :func:`render_prometheus`: the dashboard plugin's ``/metrics`` endpoint (scraped by Prometheus)
and ``backupctl status --prometheus FILE``, which writes a node_exporter textfile-collector file through
:func:`write_textfile` (atomic: a reader never sees half a file).

Metrics (every sample also carries ``application``):

=========================================  ==========  =====================================================
``backup_last_success_timestamp_seconds``  ``tier``    commit time of the tier's newest snapshot (0 = never)
``backup_age_seconds``                     ``tier``    now - that commit time (``+Inf`` when there is none)
``backup_rpo_seconds``                     ``tier``    the tier's recovery point objective
``backup_overdue``                         ``tier``    1 when age > RPO (or no snapshot), else 0
``backup_size_bytes``                      ``tier``    stored size of the newest snapshot
``backup_duration_seconds``                ``tier``    how long the newest snapshot took
``backup_storage_used_bytes``              ``storage`` bytes used by the repository on that storage
``backup_storage_free_bytes``              ``storage`` free space / quota left, when the storage reports it
``backup_storage_reachable``               ``storage`` 1 when the last check reached the storage
``backup_open_problems``                   —           open problems (all severities)
``backup_status_state``                    —           0 ok, 1 warning, 2 critical
``backup_status_generated_timestamp_seconds`` —        when the status document was written (alert on it
                                                        too: a dead monitoring DAG freezes every other value)
=========================================  ==========  =====================================================

A value the status does not know (``null``) is left out rather than reported as 0, except where noted.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backups.errors import StorageError

from .store import parse_iso

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STATE_VALUE = {"ok": 0, "warning": 1, "critical": 2}


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt(value: float | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _epoch(iso: str | None) -> float | None:
    dt = parse_iso(iso)
    return dt.timestamp() if dt else None


def _num(value: Any) -> float | int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class _Family:
    def __init__(self, name: str, help_text: str, kind: str = "gauge") -> None:
        self.name, self.help, self.kind = name, help_text, kind
        self.samples: list[tuple[dict[str, str], float | int]] = []

    def add(self, labels: dict[str, str], value: float | int | None) -> None:
        if value is not None:
            self.samples.append((labels, value))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            if labels:
                body = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
                yield f"{self.name}{{{body}}} {_fmt(value)}"
            else:
                yield f"{self.name} {_fmt(value)}"


def render_prometheus(status: dict) -> str:
    """The status document as Prometheus text exposition format (ends with a newline)."""
    app = {"application": str(status.get("application") or "")}
    fams = {
        name: _Family(name, text)
        for name, text in (
            ("backup_last_success_timestamp_seconds",
             "Unix time the newest committed snapshot of the tier was committed (0 = no snapshot yet)."),
            ("backup_age_seconds", "Seconds since the newest committed snapshot of the tier (+Inf = none)."),
            ("backup_rpo_seconds", "Recovery point objective of the tier in seconds."),
            ("backup_overdue", "1 when the tier's newest snapshot is older than its RPO (or there is none)."),
            ("backup_size_bytes", "Stored size of the tier's newest snapshot in bytes."),
            ("backup_duration_seconds", "Duration of the tier's newest backup in seconds."),
            ("backup_restorable",
             "1 when every object of the tier's newest chain is present and it has a recent passed verification "
             "with no open failure; 0 otherwise (no sample without a snapshot)."),
            ("backup_storage_used_bytes", "Bytes used by the backup repository on the storage."),
            ("backup_storage_free_bytes", "Free bytes (or quota left) on the storage, when known."),
            ("backup_storage_reachable", "1 when the last monitoring check reached the storage."),
            ("backup_open_problems", "Open backup monitoring problems (all severities)."),
            ("backup_status_state", "Overall backup state: 0 ok, 1 warning, 2 critical."),
            ("backup_status_generated_timestamp_seconds",
             "Unix time the monitoring status document was generated."),
        )
    }

    for tier in status.get("tiers") or []:
        labels = {**app, "tier": str(tier.get("tier") or "")}
        committed = _epoch(tier.get("newest_committed_at"))
        has_snapshot = bool(tier.get("newest_id")) or committed is not None
        fams["backup_last_success_timestamp_seconds"].add(labels, committed if committed is not None else 0)
        age = _num(tier.get("age_seconds"))
        if age is None and not has_snapshot:
            age = math.inf
        fams["backup_age_seconds"].add(labels, age)
        fams["backup_rpo_seconds"].add(labels, _num(tier.get("rpo_seconds")))
        if "overdue" in tier and tier["overdue"] is not None:
            fams["backup_overdue"].add(labels, 1 if tier["overdue"] else 0)
        fams["backup_size_bytes"].add(labels, _num(tier.get("size_bytes")))
        fams["backup_duration_seconds"].add(labels, _num(tier.get("duration_seconds")))
        ver, pres = tier.get("verification"), tier.get("presence")
        if has_snapshot and isinstance(ver, dict) and isinstance(pres, dict):
            fams["backup_restorable"].add(labels, 1 if ver.get("state") == "ok" and not pres.get("problems") else 0)

    for sto in status.get("storages") or []:
        labels = {**app, "storage": str(sto.get("storage") or "")}
        fams["backup_storage_used_bytes"].add(labels, _num(sto.get("used_bytes")))
        fams["backup_storage_free_bytes"].add(labels, _num(sto.get("free_bytes")))
        if sto.get("reachable") is not None:
            fams["backup_storage_reachable"].add(labels, 1 if sto["reachable"] else 0)

    fams["backup_open_problems"].add(app, len(status.get("problems") or []))
    state = _STATE_VALUE.get(str(status.get("state") or ""))
    fams["backup_status_state"].add(app, state)
    fams["backup_status_generated_timestamp_seconds"].add(app, _epoch(status.get("generated_at")))

    out: list[str] = []
    for fam in fams.values():
        if fam.samples:
            out.extend(fam.lines())
    return "\n".join(out) + "\n"


def write_textfile(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync, rename), mode 0644.

    node_exporter's textfile collector reads every ``*.prom`` file in its folder; the temporary file is named
    ``.<name>.*.tmp`` so the collector never picks up a half-written one.
    """
    target = Path(path)
    if target.is_symlink():  # write through the link: replace the file it names, keep the link
        target = Path(os.path.realpath(target))
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise StorageError(f"cannot write the metrics file {target}: {exc.strerror or exc}",
                           hint="check the path given to --prometheus") from exc
    if mode is not None and not stat.S_ISREG(mode):  # a rename would put a file in place of a device, FIFO, ...
        raise StorageError(f"cannot write the metrics file {target}: it exists and is not a regular file",
                           hint="point --prometheus at a *.prom file in node_exporter's textfile directory")
    folder = target.parent
    if not folder.is_dir():
        raise StorageError(
            f"cannot write the metrics file {target}: the folder {folder} does not exist",
            hint="create it, or point --prometheus at node_exporter's --collector.textfile.directory",
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:  # a read-only folder or file system, a full disk, no permission
        raise StorageError(
            f"cannot write the metrics file {target}: cannot create a file in {folder}: {exc.strerror or exc}",
            hint="make the folder writable by this user (node_exporter's textfile directory), or point --prometheus "
                 "at a writable folder",
        ) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise StorageError(
            f"cannot write the metrics file {target}: {exc.strerror or exc}",
            hint="check that the folder is writable by this user and the disk is not full",
        ) from exc
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target
