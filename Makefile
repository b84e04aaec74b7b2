# Two commands on a fresh machine: `make run` and `make test`.
# Each creates .venv when missing and (re)installs when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install bench clean

$(BIN)/python:
	@echo "Creating the virtual environment in $(VENV)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "Installing trio-gateway and its dependencies into $(VENV) (once; about a minute)..."
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" \
		$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)
	@echo "Installed."

install: $(STAMP)

run: $(STAMP)
	$(BIN)/trio-gateway serve --config examples/quickstart.yaml --data-dir ./data

lint: $(STAMP)
	$(BIN)/ruff check trio_gateway tests examples benchmarks
	$(BIN)/ruff format --check trio_gateway tests examples benchmarks

# The suite needs PostgreSQL: .ci/with-postgres starts a private server (installing it
# from the distribution's packages when missing) unless TRIO_GATEWAY_TEST_POSTGRES is set.
test: lint
	.ci/with-postgres $(BIN)/python -m pytest -q

# Not part of `make test`. Needs: apt-get install nginx libnginx-mod-http-echo wrk
# (docs/benchmarks.md). Writes docs/benchmarks.md and benchmarks/results/latest.json.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis
