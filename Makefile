# Quickstart: `make run` (install + default pipeline), `make test` (install + test suite).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: install run test lint dag clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,cluster]' -c constraints.txt
	touch $(STAMP)

run: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

dag: install  # the rule graph from snakemake --rulegraph (tests/test_dag.py fails when docs/pipeline.dot is stale)
	$(BIN)/python tools/rulegraph.py docs/pipeline.dot
	dot -Tsvg docs/pipeline.dot > docs/pipeline.svg

clean:
	rm -rf results logs .snakemake
