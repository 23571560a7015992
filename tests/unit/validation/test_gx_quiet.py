"""Great Expectations stays quiet: a validation in a fresh process (GX not imported yet, the root logger at INFO like
an Airflow task's) logs our one line per database and nothing from GX below WARNING — in particular none of the
~200 "Skipping registering function …" lines its import emits."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT

SCRIPT = r"""
import json, logging, sqlite3, sys
records = []
class Keep(logging.Handler):
    def emit(self, r):
        records.append([r.name, r.levelno, r.getMessage()])
logging.basicConfig(level=logging.INFO, handlers=[Keep()])
db = sys.argv[1]
c = sqlite3.connect(db)
c.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT); INSERT INTO t (x) VALUES ('a'), ('b');")
c.commit(); c.close()
assert "great_expectations" not in sys.modules
from backups.validation import validate_sqlite
r = validate_sqlite(db, {"t": {"rows": 2, "columns": [["id", "INTEGER", 0, 1], ["x", "TEXT", 0, 0]],
                               "primary_key": ["id"], "unique": []}})
print(json.dumps({"success": r["success"], "records": records}))
"""


def test_validation_logs_nothing_from_gx_below_warning(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "a.db")], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}/include:{ROOT}",
                                                     "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["success"] is True
    records = res["records"]
    assert not [m for _n, _l, m in records if "Skipping registering" in m]
    assert not [r for r in records if r[0].startswith("great_expectations") and r[1] < 30], records[:5]
    ours = [m for n, _l, m in records if n == "backups.validation.suite"]
    assert len(ours) == 1 and "GX validation of a.db: " in ours[0]
