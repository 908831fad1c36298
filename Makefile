# Quickstart: `make run` (install + default pipeline), `make test` (install + test suite), `make bench` (benchmarks/).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# make test: pytest-xdist workers; each test module runs on one worker (its fixtures are built once)
TEST_WORKERS ?= 2

BENCHMARKS := embed_throughput knn_weights knn_scale grpo_step self_certainty_memory incremental
BENCH_ARGS ?=

.PHONY: install run test lint dag bench study study-report clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,cluster,bench,tensorboard]' -c constraints.txt
	touch $(STAMP)

run: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope

lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .

bench: install  # each prints a table, then a RESULT line; BENCH_ARGS=--quick for smaller sizes
	@for b in $(BENCHMARKS); do echo "== benchmarks/$$b.py"; $(BIN)/python benchmarks/$$b.py $(BENCH_ARGS) || exit 1; done

dag: install  # the rule graph from snakemake --rulegraph (tests/test_dag.py fails when docs/pipeline.dot is stale)
	$(BIN)/python tools/rulegraph.py docs/pipeline.dot
	dot -Tsvg docs/pipeline.dot > docs/pipeline.svg

study: install  # the study of the README's "Results" (about 3 h on 2 CPU cores; resumes where it stopped)
	$(BIN)/snakemake --cores $(CORES) --configfile configs/study-cpu.yaml

# the study's reports rebuilt from its frozen artifacts alone (studies/study-cpu: only build_reports runs)
study-report: install
	cd studies/study-cpu && ../../$(BIN)/snakemake reports -s ../../Snakefile --cores 1 --configfile ../../configs/study-cpu.yaml \
		--allowed-rules build_reports reports -R build_reports

clean:
	rm -rf results logs .snakemake
