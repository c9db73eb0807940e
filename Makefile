# merge-search: `make demo` and `make test` are the whole set-up on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: install demo test test-fast lint clean-world

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev,postgres]'
	touch $(STAMP)

# The whole pipeline on the demo world (built into results/demo-world when missing): search, held-out,
# export, DPO, MT-Bench (offline stand-in judge), report in results/demo/. Re-running resumes/skips.
demo: install
	$(BIN)/merge-search demo-world build --out results/demo-world
	$(BIN)/merge-search run configs/demo.yaml

# Everything, world builds included (worlds are built once per run into results/, then reused).
test: install
	$(BIN)/python -m pytest -q tests

# For every edit: no world build, no Ray, no services (PostgreSQL, Chromium); markers in pyproject.toml.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

# A world built by an older builder is refused (its files differ): remove the project's worlds to rebuild them.
clean-world:
	rm -rf results/demo-world results/seedlike-world

lint: install
	$(BIN)/ruff check search objectives demoworld tests bench
