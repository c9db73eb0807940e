# merge-search: `make demo` and `make test` are the whole set-up on a fresh machine.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# Which torch build: cuda where nvidia-smi sees a GPU, else cpu (override: make install TORCH_VARIANT=cpu).
# TORCH_INDEX: a PyTorch wheel index to take it from (e.g. https://download.pytorch.org/whl/cu128); default: PyPI,
# whose Linux wheel is the CUDA build (on this project's CPU machines pip finds the CPU build on disk first).
TORCH_VARIANT ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
TORCH_INDEX ?=
STAMP := $(VENV)/.installed-$(TORCH_VARIANT)
TORCH_IS = $(BIN)/python -c "import sys, torch; sys.exit(('cuda' if torch.version.cuda else 'cpu') != '$(TORCH_VARIANT)')"
TORCH_PIP = $(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

.PHONY: install demo worlds test test-fast lint clean-world

install: $(STAMP)

# Re-made when pyproject.toml or the torch variant changes: a CPU venv on a GPU host gets the CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(TORCH_PIP)
	$(TORCH_IS) || $(TORCH_PIP) --force-reinstall --no-deps
	$(TORCH_IS) || { echo "torch is not the $(TORCH_VARIANT) build: set TORCH_INDEX to the PyTorch index of that build (see README)" >&2; exit 1; }
	$(BIN)/python -m pip install -q -e '.[dev,postgres]'
	rm -f $(VENV)/.installed*
	touch $(STAMP)

# The whole pipeline on the demo world (built into results/demo-world when missing): search, held-out,
# export, DPO, MT-Bench (offline stand-in judge), report in results/demo/. Re-running resumes/skips.
demo: install
	$(BIN)/merge-search demo-world build --out results/demo-world
	$(BIN)/merge-search run configs/demo.yaml

# Two pytest-xdist workers, each taking whole modules in collection order (a module fixture such as a pipeline
# run stays one run); tests/conftest.py puts the two worlds' modules first, so the worlds build side by side.
XDIST := -n 2 --dist loadscope --no-loadscope-reorder

# The two worlds the tests use, built one after the other before the tests start (each build uses two threads;
# two builds side by side on 2 cores took longer than both in turn). A quick no-op when they exist.
worlds: install
	$(BIN)/merge-search demo-world build --out results/demo-world --quiet
	$(BIN)/merge-search demo-world build --out results/seedlike-world --kind seedlike --quiet

# Everything, world builds included (worlds are built once into results/, then reused).
test: worlds
	$(BIN)/python -m pytest -q $(XDIST) tests

# For every edit: no world build, no Ray, no services (PostgreSQL, Chromium); markers in pyproject.toml.
test-fast: install
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" tests

# A world built by an older builder is refused (its files differ): remove the project's worlds to rebuild them.
clean-world:
	rm -rf results/demo-world results/seedlike-world results/.demo-world.build.lock results/.seedlike-world.build.lock

lint: install
	$(BIN)/ruff check search objectives demoworld tests bench
