# radnode: the two commands a user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install system-deps run test test-all bench lint clean

install: $(STAMP)  ## create .venv and install radnode into it (quick when up to date)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

system-deps:  ## Debian packages the tests use as real peers (dcmtk, Orthanc, dicom3tools)
	./scripts/install-system-deps.sh

run: install  ## start the embedded node: SCP :11112 + HTTP :8080 + worker, SQLite, ./radnode-data
	$(BIN)/radnode serve --log-format text

test: install system-deps  ## the default suite (about 10 minutes on 2 cores)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: install system-deps  ## everything, slow tests included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install system-deps  ## ingest benchmark: radnode vs dcmtk storescp vs Orthanc
	$(BIN)/python benchmarks/ingest.py

lint: install  ## ruff and mypy on the packages
	$(BIN)/pip install --quiet ruff mypy
	$(BIN)/ruff check radnode dimse_scp dicomweb ai_node viewer_plugin
	$(BIN)/mypy

clean:
	rm -rf $(VENV) radnode-data .pytest_cache
