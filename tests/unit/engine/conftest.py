from __future__ import annotations

import pytest

from tests.helpers import make_app


@pytest.fixture
def app(tmp_path):
    """A small generated FMR home, a repository root and a loaded config."""
    return make_app(tmp_path, seed=3)
