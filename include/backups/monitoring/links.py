"""Where the Backups plugin serves the reports, and which file (or stored object) a request may read.

The plugin (``plugins/backups_dashboard.py``, mounted at :data:`PREFIX`) serves, to the same authenticated users
as the Backups page:

* ``drills/latest`` and ``drills/<drill id>`` — a drill's HTML report (with its RTO/RPO chart, embedded);
  ``drills/<drill id>.json`` / ``.md`` / ``.html`` its other forms; ``drills/<drill id>.datadocs/<tier>/<source>/…``
  its Great Expectations Data Docs (the HTML report links them relatively, so they open from the report). Read
  from the drill folder (:func:`backups.commands.drill.common.drill_dir`: ``<status dir>/../drill``).
* ``snapshots/<snapshot id>/report`` — a backup run's result document (``reports/<tier>/<id>.md`` and ``.json``,
  written by ``commands/backup.write_report`` next to the snapshot), read from the first storage that has it;
  ``…/report.json`` / ``…/report.md`` the raw forms.

:func:`drill_report_url` and :func:`backup_report_url` give those URLs for a run's note or a page; the Airflow
layer adds the API server's base URL (``backups.orchestration.run_notes.drill_report_url``). Requests are
checked here, not by string tricks in the plugin: ids must match their pattern, paths must be plain names
(no ``..``, no absolute path, no hidden file) and resolve inside the drill folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from ..config import Config
    from ..storage import Resolver

#: where the Airflow API server mounts the plugin
PREFIX = "/backups"
#: the Backups page inside the Airflow UI (the plugin's external view: the UI's navigation around the page)
PAGE = "/plugin/backups"
#: a drill id (``drill-20261207T040000Z``; a drill requested with its own id: letters, digits, ``_``, ``-``)
DRILL_ID = re.compile(r"^drill-[A-Za-z0-9][A-Za-z0-9_-]{0,100}$")
#: a snapshot id (``daily-20261207T020000Z``): the catalog's pattern
SNAPSHOT_ID = re.compile(r"^[a-z][a-z0-9_]{0,62}-\d{8}T\d{6}Z$")
_REPORT_EXT = ("html", "json", "md")
#: one segment of a Data Docs path (GX writes names like ``index.html``, ``validations``, ``2026…-x.html``)
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@%+=-]{0,200}$")
#: the media types of what is served (anything else is refused)
MEDIA = {".html": "text/html; charset=utf-8", ".json": "application/json", ".md": "text/markdown; charset=utf-8",
         ".css": "text/css", ".js": "text/javascript", ".png": "image/png", ".svg": "image/svg+xml",
         ".ico": "image/x-icon", ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf",
         ".jpg": "image/jpeg", ".gif": "image/gif"}


def page_url(*, base: str = "") -> str:
    """The URL of the Backups page inside the Airflow UI."""
    return f"{base.rstrip('/')}{PAGE}"


def drill_report_url(drill_id: str = "latest", *, base: str = "") -> str:
    """The URL of a drill's HTML report (``latest``: the newest drill's): ``<base>/backups/drills/<id>``."""
    if drill_id != "latest" and not DRILL_ID.match(drill_id):
        raise ValueError(f"not a drill id: {drill_id!r}")
    return f"{base.rstrip('/')}{PREFIX}/drills/{quote(drill_id, safe='')}"


def backup_report_url(snapshot_id: str, *, base: str = "") -> str:
    """The URL of a backup run's result document: ``<base>/backups/snapshots/<id>/report``."""
    if not SNAPSHOT_ID.match(snapshot_id):
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    return f"{base.rstrip('/')}{PREFIX}/snapshots/{quote(snapshot_id, safe='')}/report"


def drill_file(folder: Path, path: str) -> Path | None:
    """The file of the drill folder ``folder`` that the request path ``path`` (below ``drills/``) names, or None
    (not found, or not a name this route serves)."""
    parts = path.split("/")
    if not parts or any(p in ("", ".", "..") for p in parts):
        return None
    first = parts[0]
    if len(parts) == 1:
        stem, _, ext = first.rpartition(".")
        if not stem:  # no extension: the HTML report of a drill id, or of the newest drill
            stem, ext = first, "html"
        if ext not in _REPORT_EXT or not (stem == "latest" or DRILL_ID.match(stem)):
            return None
        rel = [f"{stem}.{ext}"]
    else:  # Data Docs: drill-<id>.datadocs/<tier>/<source>/...
        stem = first.removesuffix(".datadocs")
        if stem == first or not DRILL_ID.match(stem) or not all(_SEGMENT.match(p) for p in parts[1:]):
            return None
        rel = parts
    candidate = folder.joinpath(*rel)
    if candidate.suffix.lower() not in MEDIA:
        return None
    try:
        root = folder.resolve(strict=True)
        real = candidate.resolve(strict=True)
    except OSError:
        return None
    if not real.is_relative_to(root) or not real.is_file():
        return None
    return real


def backup_report(cfg: Config, snapshot_id: str, ext: str, resolver: Resolver | None = None) -> tuple[bytes, str] | None:
    """A backup's result document (``ext``: ``md`` or ``json``) and the storage it came from, read from the first
    storage of the config that holds it (instant storages only: an archive class would need a thaw); None when no
    storage has it. A storage that cannot be opened or read is skipped."""
    from ..errors import BackupError
    from ..repository import report_key
    from ..storage import open_storage

    if not SNAPSHOT_ID.match(snapshot_id) or ext not in ("md", "json"):
        return None
    key = report_key(snapshot_id, ext)
    names = sorted(cfg.storages, key=lambda n: cfg.storages[n].type != "local")  # local first: no network
    for name in names:
        sc = cfg.storages[name]
        if getattr(sc, "storage_class", "STANDARD") in ("GLACIER", "DEEP_ARCHIVE"):
            continue
        try:
            st = open_storage(cfg, name, resolver, read_only=True)
            if st.exists(key):
                return st.get_bytes(key), name
        except (BackupError, OSError):
            continue
    return None
