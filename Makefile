# Shusheng monorepo. `make demo` runs the chain on a tiny model on CPU; `make test` runs every package's tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU-only machines get the torch 2.13.0 CPU build (a local wheel on our machines); GPU machines the default build.
# Override with e.g. `make setup TORCH=torch` or `TORCH='torch==2.11.0'`.
TORCH  ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
PACKAGES := $(notdir $(patsubst %/,%,$(wildcard packages/*/)))
PYTEST := $(BIN)/python -m pytest -q --import-mode=importlib -p no:cacheprovider

.PHONY: setup test demo lint bench clean $(addprefix test-,$(PACKAGES))

setup: $(VENV)/.installed

# model first: every other package depends on it; all editable, with their test extras
$(VENV)/.installed: $(wildcard packages/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q hatchling editables ruff
	$(BIN)/python -m pip install -q --no-build-isolation -e "packages/model[test]" \
		$(foreach p,$(filter-out model,$(PACKAGES)),-e "packages/$(p)[test]")
	touch $@

test: setup
	@set -e; for p in $(PACKAGES); do echo "== packages/$$p"; $(PYTEST) packages/$$p/tests; done
	@echo "== tests (cross-package)"; $(PYTEST) tests

$(addprefix test-,$(PACKAGES)): test-%: setup
	$(PYTEST) packages/$*/tests

demo: setup
	$(BIN)/python demo/run.py --out demo-out

lint: setup
	$(BIN)/ruff check packages tests demo

bench: setup
	@for f in packages/*/benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) demo-out
