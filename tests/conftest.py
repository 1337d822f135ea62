"""Shared pytest fixtures. Reference fixtures live in ../shared/fixtures."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> pathlib.Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.fail(
            f"reference fixtures not found at {SHARED_FIXTURES} (expected ../shared/fixtures)"
        )
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture
def clean_gin():
    """A test that parses gin starts and ends with an empty gin config."""
    import gin

    gin.clear_config()
    yield
    gin.clear_config()
