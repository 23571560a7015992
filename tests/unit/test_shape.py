"""Shape of the library (issue 17): no module in ``include/backups`` over 700 lines, no function over 80.

A ratchet: the modules and functions still over the limit are listed with their current size as a ceiling — one
may shrink (then lower or remove its entry), never grow, and nothing new may cross the limit."""

from __future__ import annotations

import ast

from tests.helpers import ROOT

PACKAGE = ROOT / "include" / "backups"
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 80

#: module (relative to include/backups) -> lines, for the modules still over MAX_MODULE_LINES
LONG_MODULES = {"cli.py": 723, "commands/backup.py": 841, "commands/restore.py": 901}
#: "module:function" -> lines, for the functions still over MAX_FUNCTION_LINES
LONG_FUNCTIONS = {
    "cli.py:build_parser": 144,
    "demo/fmr.py:mutate": 82,
    "engine/archiver.py:backup_source": 190,
    "engine/databases.py:pg_load_tables": 100,
    "engine/restorer.py:restore_source": 134,
    "engine/restorer.py:_extract_archive": 114,
    "monitoring/dashboard.py:render_dashboard": 124,
    "monitoring/health.py:evaluate": 136,
    "monitoring/status.py:build_status": 107,
    "orchestration/dags.py:add_backup_tasks": 183,
    "orchestration/demo.py:_run": 82,
    "orchestration/restore_dag.py:add_restore_tasks": 89,
    "sources/files.py:_scan": 101,
}


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules, functions = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        text = path.read_text(encoding="utf-8")
        modules[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                key = f"{rel}:{node.name}"
                functions[key] = max(functions.get(key, 0), node.end_lineno - node.lineno + 1)
    return modules, functions


def test_no_module_or_function_grows_past_the_limits():
    modules, functions = _sizes()
    too_long = {m: n for m, n in modules.items() if n > max(MAX_MODULE_LINES, LONG_MODULES.get(m, 0))}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {too_long}"
    too_long = {f: n for f, n in functions.items() if n > max(MAX_FUNCTION_LINES, LONG_FUNCTIONS.get(f, 0))}
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named helpers): {too_long}"

