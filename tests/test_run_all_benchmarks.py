"""benchmarks/run_all.py (``make bench``) lists every benchmark module and reports failures."""

import pathlib

import pytest

from benchmarks import run_all

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_benchmark_module_is_run():
    modules = {p.stem for p in BENCH_DIR.glob("*.py")} - {"__init__", "run_all"}
    listed = [name for name, _ in run_all.BENCHMARKS + run_all.SLOW_BENCHMARKS]
    missing = sorted(modules - set(listed))
    assert not missing, f"add {missing} to benchmarks/run_all.py"
    assert len(set(listed)) == len(listed)


def test_unknown_benchmark_is_an_error(capsys):
    with pytest.raises(SystemExit):
        run_all.main(["--only", "no_such_bench"])
    assert "no_such_bench" in capsys.readouterr().err


def test_a_failing_benchmark_is_reported(monkeypatch, capsys):
    monkeypatch.setattr(run_all, "BENCHMARKS", (("no_such_module", []),))
    assert run_all.main([]) == 1
    assert "failed: no_such_module" in capsys.readouterr().out
