# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv when missing and install the project with the pinned
# dependency set in constraints.txt (the versions CI tested).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo reproduce test lint format bench clean

$(STAMP): setup.py pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[cpu,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m transfer.demo --out demo_out

# LocCa vs Cap/CapPa on the shapes world at a larger budget (gin/demo/reproduce.gin);
# resumable: `make reproduce RESUME=--resume` keeps finished stages and cells.
reproduce: $(STAMP)
	$(PY) -m transfer.demo --out reproduce_out --gin_file=demo/reproduce.gin $(RESUME)

# --dist loadfile: a module's tests run on one worker, so its module-scoped fixtures (the
# multi-host runs, the reference CLI runs) are computed once, not once per worker.
# (loadgroup / xdist_group does not group under pytest 9.2 + xdist 3.8: checked.)
# --no-loadscope-reorder: modules go out in collection order, which tests/conftest.py
# sorts longest first (xdist's own reorder sorts by number of tests).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -q --durations=25 tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf demo_out reproduce_out build *.egg-info
