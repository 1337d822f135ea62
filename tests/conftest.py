"""Shared pytest fixtures. Reference fixtures live in ../shared/fixtures."""

import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole run: set here, in the xdist
# controller, before the workers start, so both workers and every subprocess a test
# launches (CLI runs, multi-host processes, SIGKILL victims) inherit it and compile
# each identical program once. A fresh directory per run: nothing carries over.
_OWN_XLA_CACHE = None  # the directory this process created (the controller), removed at exit
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_XLA_CACHE = tempfile.mkdtemp(prefix="locca_tests_xla_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_XLA_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

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


# Longest modules first (by the slowest tests of the last measured `make test` runs): with
# `--dist loadfile --no-loadscope-reorder` xdist hands out whole modules in this
# order, so the long ones start at once and the short ones fill the tail of
# both workers (longest-processing-time-first scheduling). xdist's default
# reorder sorts by *number of tests*, which left the 4-minute demo test to
# start last on one worker while the other sat idle.
SLOW_MODULES_FIRST = (
    "test_demo.py",
    "test_multihost.py",
    "test_transfer.py",
    "test_experiment.py",
    "test_pretrain.py",
    "test_faults.py",
    "test_locca.py",
    "test_rec_protocol.py",
    "test_trainer_resume.py",
    "test_pali.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


def pytest_unconfigure(config):
    if _OWN_XLA_CACHE is not None:
        shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)
