# `make train` and `make test` create .venv from pyproject.toml when it is
# missing or older than pyproject.toml, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev,sweep,tensorboard,mlflow]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python -m mnistcnn train $(ARGS)

# Everything (what CI runs); test-fast leaves out the tests marked slow (real processes,
# signals, sweeps, the wheel, real MNIST) for the edit-test loop. Tests run in one pytest-xdist
# worker per core (each test trains with one torch thread); a test file stays on one worker,
# so the trained runs its fixtures share are trained once. TEST_WORKERS=0: one process.
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
