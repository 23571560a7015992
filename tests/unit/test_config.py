"""Strict config validation: the shipped file verbatim, env expansion, and one clear message per mistake."""

from __future__ import annotations

import pytest

from backups.config import DEFAULT_CONFIG, load_config, parse_config
from backups.errors import ConfigError
from tests.helpers import ROOT

ENV = {"FMR_HOME": "/srv/fmr", "BACKUP_ROOT": "/srv/backups"}
LOCAL_CONFIG = DEFAULT_CONFIG.with_name("backups.local.yaml")
# the configuration from the foundation issue, which must be accepted verbatim
VERBATIM = """\
application: fmr-v2
sources:
  app_db:       {type: sqlite, path: "${FMR_HOME}/app.db"}
  app_files:    {type: files, root: "${FMR_HOME}", include: ["config/**", "user_data/**", "logs/**", "uploads/**"], exclude: ["**/*.tmp"]}
  system_state: {type: command, command: ["uname", "-a"]}
storages:
  local: {type: local, path: "${BACKUP_ROOT}/local"}
tiers:
  daily:   {type: incremental, schedule: "0 2 * * 1-6", sources: [app_db, app_files, system_state], storages: [local], retention: {keep_daily: 14}}
  weekly:  {type: full,        schedule: "0 1 * * 0",   sources: [app_db, app_files, system_state], storages: [local], retention: {keep_weekly: 8}}
  monthly: {type: full,        schedule: "0 3 1 * *",   sources: [app_db, app_files, system_state], storages: [local], retention: {keep_monthly: 12}}
"""


def test_embedded_default_is_the_verbatim_config():
    """The foundation config verbatim, followed by the drill block (issue 10) and nothing else."""
    body = "".join(line + "\n" for line in LOCAL_CONFIG.read_text().splitlines() if not line.startswith("#"))
    head, sep, _drill = body.partition("drill:\n")
    assert head == VERBATIM and sep
    cfg = load_config(LOCAL_CONFIG, env=ENV)
    assert cfg.drill is not None and cfg.drill.tiers == ["daily", "weekly"] and len(cfg.drill.smoke) == 4
    assert parse_config(VERBATIM, "verbatim.yaml", env=ENV) == cfg.model_copy(update={"drill": None})


def test_production_config_fans_out_to_cloud_offsite_and_archive():
    cfg = load_config(DEFAULT_CONFIG, env=ENV)
    assert cfg.tiers["daily"].storages == ["local", "cloud"]
    assert cfg.tiers["weekly"].storages == ["local", "cloud", "offsite"]
    assert cfg.tiers["monthly"].storages == ["offsite", "archive"]
    assert cfg.storages["archive"].storage_class == "GLACIER" and cfg.storages["offsite"].encryption.key_env
    assert cfg.needs_airflow()


def test_shipped_config_is_accepted_verbatim():
    cfg = load_config(LOCAL_CONFIG, env=ENV)
    assert cfg.application == "fmr-v2"
    assert sorted(cfg.tiers) == ["daily", "monthly", "weekly"]
    assert cfg.sources["app_db"].path == "/srv/fmr/app.db"
    assert cfg.storages["local"].path == "/srv/backups/local"
    assert cfg.tiers["daily"].type == "incremental" and cfg.tiers["daily"].retention.keep_daily == 14


def test_env_default_syntax():
    text = VERBATIM.replace("${BACKUP_ROOT}", "${BACKUP_ROOT:-/var/backups}")
    cfg = parse_config(text, "x.yaml", env={"FMR_HOME": "/h"})
    assert cfg.storages["local"].path == "/var/backups/local"


def test_postgres_source_with_dsn_or_conn_id():
    base = VERBATIM
    text = base.replace("sources:\n", 'sources:\n  pg: {type: postgres, dsn: "postgresql://u@h/db"}\n  pg2: {type: postgres, conn_id: fmr_postgres}\n', 1)
    cfg = parse_config(text, "x.yaml", env=ENV)
    assert cfg.sources["pg"].dsn and cfg.sources["pg2"].conn_id == "fmr_postgres"
    assert cfg.needs_airflow()
    assert not load_config(LOCAL_CONFIG, env=ENV).needs_airflow()


def _error(text: str, env=ENV) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml", env=env)
    assert info.value.exit_code == 2
    return str(info.value)


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (("application: fmr-v2", "application: fmr-v2\ncolour: blue"), ["cfg.yaml", "colour", "unknown key"]),
        (("[app_db, app_files, system_state], storages: [local], retention: {keep_daily: 14}",
          "[app_db, nope, system_state], storages: [local], retention: {keep_daily: 14}"),
         ["tiers.daily.sources.1", "unknown source 'nope'", "app_db"]),
        (('"0 2 * * 1-6"', '"every night"'), ["tiers.daily.schedule", "cron"]),
        (("storages: [local], retention: {keep_weekly: 8}", "storages: [cloud], retention: {keep_weekly: 8}"),
         ["tiers.weekly.storages.0", "unknown storage 'cloud'"]),
        (("{type: sqlite, path:", "{type: mysql, path:"), ["sources.app_db", "mysql"]),
        (("retention: {keep_daily: 14}", "retention: {keep_dayly: 14}"), ["tiers.daily.retention.keep_dayly", "unknown key"]),
        (("type: incremental", "type: snapshot"), ["tiers.daily.type"]),
    ],
)
def test_bad_configs_name_file_key_and_fix(mutation, expected):
    old, new = mutation
    text = VERBATIM
    assert old in text
    msg = _error(text.replace(old, new, 1))
    for part in expected:
        assert part in msg, msg


def test_missing_env_var_names_key_and_fix():
    msg = _error(VERBATIM, env={"FMR_HOME": "/h"})
    assert "storages.local.path" in msg and "BACKUP_ROOT" in msg and "export BACKUP_ROOT" in msg


def test_invalid_yaml_and_missing_file(tmp_path):
    assert "line" in _error("a: [1, 2")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "none.yaml")
    assert "not found" in str(info.value) and "--config" in str(info.value)


def test_postgres_needs_exactly_one_of_dsn_or_conn_id():
    text = VERBATIM.replace("sources:\n", "sources:\n  pg: {type: postgres}\n", 1)
    assert "exactly one of 'dsn'" in _error(text)


def test_core_library_never_imports_airflow():
    root = ROOT / "include" / "backups"
    offenders = []
    for py in root.rglob("*.py"):
        if "orchestration" in py.parts:
            continue
        for line in py.read_text().splitlines():
            s = line.strip()
            if s.startswith(("import airflow", "from airflow")):
                offenders.append(f"{py.relative_to(root)}: {s}")
            # the core never depends on the Airflow layer (connections arrive as an injected resolver)
            if s.startswith(("from .orchestration", "from ..orchestration", "from backups.orchestration",
                             "import backups.orchestration")):
                offenders.append(f"{py.relative_to(root)}: {s}")
    assert offenders == []


# ---------------------------------------------------------------------------------------------- hostile input
def _billion_laughs(levels: int = 9, fan: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels + 1)]
    return VERBATIM + "\n".join(lines).replace("a0:", "x_bomb:\n  a0:").replace("\na", "\n  a") + "\n"


@pytest.mark.timeout(20)  # a hang guard only: the old loader took a minute and 2 GB, then a MemoryError
def test_yaml_alias_bomb_is_refused_fast():
    import time

    text = _billion_laughs()
    t0 = time.monotonic()
    msg = _error(text)
    assert time.monotonic() - t0 < 2, "an alias bomb must be refused in well under a second"
    assert "cfg.yaml" in msg and "aliases expanded" in msg and "more than 100,000 nodes" in msg and "fix:" in msg, msg


@pytest.mark.parametrize("text", ["application: &a [*a]\n", "application: &a {b: *a}\n",
                                  "application: &a {<<: *a}\n", "x: &a [[1, [*a]]]\n"])
def test_recursive_yaml_alias_is_refused(text):
    msg = _error(text)
    assert "cfg.yaml" in msg and "recursive" in msg and "line 1" in msg and "fix:" in msg, msg


@pytest.mark.timeout(20)
def test_alias_bomb_through_merge_keys_is_refused_fast():
    lines = ["a0: &a0 {k0: lol, k1: lol, k2: lol, k3: lol, k4: lol, k5: lol, k6: lol, k7: lol, k8: lol}"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"{{<<: *a{i - 1}}}"] * 9) + "]" if i == 1 else
              f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    msg = _error("\n".join(lines) + "\n")
    assert "more than 100,000 nodes" in msg, msg


def test_small_aliases_are_still_accepted():
    """An ordinary use of anchors (a shared retention block) still loads."""
    text = VERBATIM.replace("retention: {keep_daily: 14}", "retention: &r {keep_daily: 14}", 1).replace(
        "retention: {keep_weekly: 8}", "retention: *r", 1)
    cfg = parse_config(text, "cfg.yaml", env=ENV)
    assert cfg.tiers["weekly"].retention.keep_daily == 14


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 31 4 *", "15 3 31 2,4,6,9,11 *"])
def test_cron_that_never_fires_is_refused(cron):
    msg = _error(VERBATIM.replace('"0 1 * * 0"', f'"{cron}"', 1))
    assert "tiers.weekly.schedule" in msg and "never fires" in msg and cron in msg, msg


def test_never_firing_cron_is_refused_for_monitoring_and_drill():
    msg = _error(VERBATIM + 'monitoring: {schedule: "0 0 30 2 *"}\n')
    assert "monitoring.schedule" in msg and "never fires" in msg, msg
    msg = _error(VERBATIM + 'drill: {schedule: "0 0 31 11 *"}\n')
    assert "drill.schedule" in msg and "never fires" in msg, msg


def test_rare_but_real_crons_are_accepted():
    """A leap-day cron fires every 4 (at worst 8) years: valid."""
    cfg = parse_config(VERBATIM.replace('"0 1 * * 0"', '"0 0 29 2 *"', 1), "cfg.yaml", env=ENV)
    assert cfg.tiers["weekly"].schedule == "0 0 29 2 *"


_CRON_FIELD = {
    "minute": (0, 59, [0]), "hour": (0, 23, [0]), "dom": (1, 31, [29, 30, 31]), "month": (1, 12, [2, 4, 6, 9, 11]),
    "dow": (0, 6, [0]),
}


def _cron_field(lo: int, hi: int, rare: list[int]):
    """A cron field: *, one value, a list, a step; biased towards ``rare`` values (30/31, short months)."""
    from hypothesis import strategies as st

    value = st.one_of(st.sampled_from(rare), st.integers(lo, hi))
    return st.one_of(st.just("*"), value.map(str), st.lists(value, min_size=1, max_size=3, unique=True).map(
        lambda xs: ",".join(map(str, sorted(xs)))), st.integers(1, hi - lo + 1).map(lambda n: f"*/{n}"))


def test_every_cron_that_passes_validation_is_usable_by_status_and_drill():
    """Property: any 5-field cron the config accepts gives the status an RPO and the drill a next date (no
    CroniterBadDateError ever reaches `status --check`)."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    from backups.commands.drill import next_drill
    from backups.monitoring.status import cron_max_gap_seconds

    fields = st.tuples(*(_cron_field(*spec) for spec in _CRON_FIELD.values())).map(" ".join)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(fields)
    @example("0 0 30 2 *")
    @example("0 0 31 4,6 *")
    def check(cron):
        from pydantic import ValidationError

        from backups.config import Tier

        try:
            Tier(type="full", schedule=cron, sources=["a"], storages=["b"])
        except ValidationError:
            return
        assert cron_max_gap_seconds(cron) > 0
        assert next_drill(cron)

    check()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}"), ("- ", "")])
def test_deep_nesting_is_refused_fast(opening, closing):
    import time

    if opening == "- ":  # block sequences, one level per line
        # 500 levels (3000 would be 9 MB, refused by its size before its depth: MAX_CONFIG_BYTES)
        text = "application:\n" + "".join("  " * i + "-\n" for i in range(1, 500)) + "  " * 500 + "- x\n"
    else:
        text = "application: " + opening * 5000 + "x" + closing * 5000 + "\n"
    t0 = time.monotonic()
    msg = _error(text)
    assert time.monotonic() - t0 < 2
    assert "deeper than 64 levels" in msg and "line" in msg, msg


@pytest.mark.parametrize("klass", ["GLACIER", "DEEP_ARCHIVE"])
def test_an_archive_storage_class_as_a_tiers_first_storage_is_refused(klass):
    """A backup reads its first storage back (its own part.json, the integrity check): an archive class there
    would fail every backup (exit 5) and leave objects behind. Refused at validation, naming the key and the fix;
    the same storage after an instant one is fine."""
    arch = (f'storages:\n  local: {{type: local, path: "${{BACKUP_ROOT}}/local"}}\n'
            f'  archive: {{type: s3, bucket: b, storage_class: {klass}}}\n')
    text = VERBATIM.replace('storages:\n  local: {type: local, path: "${BACKUP_ROOT}/local"}\n', arch)
    bad = text.replace("storages: [local], retention: {keep_monthly: 12}", "storages: [archive, local], "
                                                                          "retention: {keep_monthly: 12}")
    with pytest.raises(ConfigError) as ei:
        parse_config(bad, "b.yaml", env=ENV)
    msg = str(ei.value)
    assert ei.value.exit_code == 2 and "tiers.monthly.storages.0" in msg and klass in msg, msg
    assert "storages: [local, archive]" in msg  # the fix, spelt out
    ok = text.replace("storages: [local], retention: {keep_monthly: 12}", "storages: [local, archive], "
                                                                         "retention: {keep_monthly: 12}")
    assert parse_config(ok, "b.yaml", env=ENV).tiers["monthly"].storages == ["local", "archive"]


def test_the_manual_tier_never_has_an_archive_storage_first():
    """backup_manual writes to every storage (or the chosen ones) in config order: an archive storage listed first
    moves behind the instant ones; choosing only archive storages is refused (exit 2) naming the fix."""
    from backups.commands.backup import MANUAL_TIER, selection, with_manual_tier

    arch = ('storages:\n  archive: {type: s3, bucket: b, storage_class: DEEP_ARCHIVE}\n'
            '  local: {type: local, path: "${BACKUP_ROOT}/local"}\n')
    cfg = parse_config(VERBATIM.replace('storages:\n  local: {type: local, path: "${BACKUP_ROOT}/local"}\n', arch),
                       "m.yaml", env=ENV)
    assert with_manual_tier(cfg).tiers[MANUAL_TIER].storages == ["local", "archive"]
    assert selection(cfg, MANUAL_TIER, {"storages": ["archive", "local"]}).storages == ["local", "archive"]
    with pytest.raises(ConfigError, match="only has archive storage classes") as ei:
        selection(cfg, MANUAL_TIER, {"storages": ["archive"]})
    assert ei.value.exit_code == 2 and "choose an instant storage too" in ei.value.hint


@pytest.mark.timeout(30)  # a hang guard only: 2 million keys took minutes and more than a gigabyte
def test_a_huge_config_is_refused_fast_before_parsing(tmp_path):
    import time

    path = tmp_path / "huge.yaml"
    path.write_text(VERBATIM + "".join(f"x_k{i}: 1\n" for i in range(400_000)))
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_config(path, env=ENV)
    assert time.monotonic() - t0 < 2
    assert str(path) in e.value.message and "larger than 1,048,576 bytes" in e.value.message and e.value.hint
    with pytest.raises(ConfigError, match="larger than"):
        parse_config(path.read_text(), "cfg.yaml", env=ENV)


@pytest.mark.timeout(30)
def test_a_device_as_config_is_refused_not_read_forever():
    """Before: ``--config /dev/zero`` read until memory ran out."""
    with pytest.raises(ConfigError, match="/dev/zero: larger than"):
        load_config("/dev/zero", env=ENV)


def test_a_config_that_is_not_utf8_is_a_config_error(tmp_path):
    """Before: a UnicodeDecodeError traceback (exit 1)."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(VERBATIM.encode() + b"# r\xe9sum\xe9\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, env=ENV)
    assert str(path) in e.value.message and "UTF-8" in e.value.message


@pytest.mark.parametrize("extra", ["locks: {orphan_grace_hours: .inf}", "locks: {orphan_grace_hours: 1e300}",
                                   "locks: {wait_seconds: .inf}", "monitoring: {verify_within_days: .nan}",
                                   "monitoring: {size_anomaly_factor: .inf}"])
def test_infinite_or_absurd_numbers_are_config_errors(extra):
    """Before: ``orphan_grace_hours: .inf`` (or 1e300) passed validation, then every prune was an OverflowError
    traceback."""
    key = extra.split("{")[1].split(":")[0]
    msg = _error(VERBATIM + extra + "\n")
    assert key in msg, msg


def test_a_command_timeout_beyond_a_year_is_a_config_error():
    """Before: ``timeout_seconds: 100000000000000000000`` passed validation, then the backup was an OverflowError
    traceback ("timestamp too large to convert to C _PyTime_t")."""
    text = VERBATIM.replace('["uname", "-a"]}', '["uname", "-a"], timeout_seconds: 100000000000000000000}', 1)
    assert text != VERBATIM
    msg = _error(text)
    assert "timeout_seconds" in msg, msg


def test_no_config_anywhere_says_a_pip_install_ships_none_and_how_to_fix(tmp_path, monkeypatch):
    # a pip-installed package: no include/backups.yaml next to it, and BACKUP_CONFIG not set
    monkeypatch.setattr("backups.config.DEFAULT_CONFIG", tmp_path / "site-packages" / "backups.yaml")
    monkeypatch.delenv("BACKUP_CONFIG", raising=False)
    with pytest.raises(ConfigError) as ei:
        load_config()
    assert "BACKUP_CONFIG is not set" in ei.value.message and "ships none" in ei.value.message
    assert "include/backups.yaml" in ei.value.hint and "BACKUP_CONFIG" in ei.value.hint
    assert ei.value.exit_code == 2
