"""Load ``airflow_settings.yaml`` (Astro CLI format) into a local Airflow without the Astro CLI.

``python -m tools.airflow_settings airflow_settings.yaml --import-dir DIR`` writes ``connections.json``,
``variables.json`` and ``pools.json`` for ``airflow connections|variables|pools import``;
``--env`` prints ``export AIRFLOW_CONN_…`` / ``AIRFLOW_VAR_…`` lines instead (for tests and ``dag.test``).
Unlike Astro (which silently drops non-string extras) every extra value is kept.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

_FIELDS = {"conn_type": "conn_type", "conn_host": "host", "conn_login": "login", "conn_password": "password",
           "conn_schema": "schema", "conn_port": "port"}


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text()) or {}
    section = doc.get("airflow") or {}
    conns: dict[str, dict[str, Any]] = {}
    for c in section.get("connections") or []:
        if "conn_id" not in c:
            raise SystemExit(f"{path}: a connection lacks conn_id")
        if c.get("conn_uri") and not any(c.get(k) for k in _FIELDS):
            conns[c["conn_id"]] = {"uri": c["conn_uri"]}
            continue
        entry = {v: c[k] for k, v in _FIELDS.items() if c.get(k) not in (None, "")}
        extra = c.get("conn_extra")
        if extra:
            entry["extra"] = extra if isinstance(extra, str) else json.dumps(extra)
        conns[c["conn_id"]] = entry
    variables = {v["variable_name"]: str(v.get("variable_value", "")) for v in section.get("variables") or []}
    pools = {p["pool_name"]: {"slots": int(p["pool_slot"]), "description": p.get("pool_description", "")}
             for p in section.get("pools") or [] if p.get("pool_slot")}
    return {"connections": conns, "variables": variables, "pools": pools}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--import-dir", type=Path)
    ap.add_argument("--env", action="store_true")
    a = ap.parse_args(argv)
    data = load(a.file)
    if a.env:
        for cid, c in data["connections"].items():
            val = c["uri"] if "uri" in c else json.dumps(c)
            print(f"export AIRFLOW_CONN_{cid.upper()}={shlex.quote(val)}")
        for name, val in data["variables"].items():
            print(f"export AIRFLOW_VAR_{name.upper()}={shlex.quote(val)}")
    if a.import_dir:
        a.import_dir.mkdir(parents=True, exist_ok=True)
        conns = {cid: ({"conn_type": "generic"} | c if "uri" not in c else c) for cid, c in data["connections"].items()}
        (a.import_dir / "connections.json").write_text(json.dumps(conns, indent=1))
        (a.import_dir / "variables.json").write_text(json.dumps(data["variables"], indent=1))
        (a.import_dir / "pools.json").write_text(json.dumps(data["pools"], indent=1))
        print(f"wrote {a.import_dir}/connections.json, variables.json, pools.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
