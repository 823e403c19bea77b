from pathlib import Path

import pytest

from tests.app.workspaces import built_sample, copy_workspace


@pytest.fixture(scope="session")
def sample_workspace(tmp_path_factory) -> Path:
    """The bundled sample with contexts, metrics and map; tests must not change it."""
    return built_sample(tmp_path_factory.getbasetemp())


@pytest.fixture
def sample_copy(sample_workspace, tmp_path) -> Path:
    """A copy of the sample that a test may change."""
    return copy_workspace(sample_workspace, tmp_path)


@pytest.fixture(autouse=True)
def app_cache(tmp_path_factory, monkeypatch) -> Path:
    """Keep the app's per-user folder (sample, uploads, job status) out of the home folder."""
    folder = tmp_path_factory.getbasetemp() / "app-cache"
    monkeypatch.setenv("ICP_APP_CACHE", str(folder))
    return folder
