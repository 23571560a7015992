from __future__ import annotations

import pytest

from backups.config import load_config
from backups.demo import fmr
from tests.helpers import write_config


@pytest.fixture
def app(tmp_path):
    """A small generated FMR home, a repository root and a loaded config."""
    home, root = tmp_path / "home", tmp_path / "repo"
    fmr.generate(home, scale=0.5, seed=3)
    cfg_path = write_config(tmp_path / "backups.yaml", home, root)
    return {"home": home, "root": root, "config_path": cfg_path, "cfg": load_config(cfg_path), "tmp": tmp_path}
