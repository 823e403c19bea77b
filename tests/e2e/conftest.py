from pathlib import Path

import pytest

from tests.app.workspaces import built_sample


@pytest.fixture(scope="session")
def sample_workspace(tmp_path_factory) -> Path:
    """The bundled sample with contexts, metrics and map; tests must not change it."""
    return built_sample(tmp_path_factory.getbasetemp())
