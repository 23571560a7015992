from __future__ import annotations

import pytest

from tests.helpers import make_app
from tests.property.tools import files_config


@pytest.fixture
def app(tmp_path):
    """A small generated FMR home, a repository root and a loaded config."""
    return make_app(tmp_path, seed=3)


@pytest.fixture
def env(tmp_path):
    """A files source rooted at ``src`` (empty) backed up into ``repo``: the files-engine tests' world."""
    root, repo = tmp_path / "src", tmp_path / "repo"
    root.mkdir()
    return {"tmp": tmp_path, "root": root, "repo": repo, "cfg": files_config(tmp_path, root, repo)}
