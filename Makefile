# radnode: the two commands a user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install system-deps ohif viewer run test test-all test-reliability bench lint clean

install: $(STAMP)  ## create .venv and install radnode into it (quick when up to date)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

system-deps:  ## Debian packages the tests use as real peers (dcmtk, Orthanc, dicom3tools)
	./scripts/install-system-deps.sh

OHIF_VERSION := 3.13.2
OHIF_DIST    := build/ohif/package/dist

ohif: $(OHIF_DIST)/index.html  ## fetch the prebuilt OHIF viewer (npm @ohif/app, ~50 MB) into build/ohif

$(OHIF_DIST)/index.html:
	mkdir -p build/ohif
	cd build/ohif && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null && tar xzf ohif-app-$(OHIF_VERSION).tgz && rm ohif-app-$(OHIF_VERSION).tgz
	touch $@

viewer: install ohif  ## OHIF on :3000 beside a running `make run` (its /dicom-web/ proxied to :8080)
	$(BIN)/python -m viewer_plugin.ohif

run: install  ## start the embedded node: SCP :11112 + HTTP :8080 + worker, SQLite, ./radnode-data
	$(BIN)/radnode serve --log-format text

test: install system-deps  ## the default suite (about 10 minutes on 2 cores)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# `make test` runs the reliability suite's short version (RADNODE_RELIABILITY unset).
RELIABILITY_FIGURES ?= build/reliability/figures.jsonl

test-reliability: install system-deps  ## the reliability suite at full size (about 20 min; docs/reliability.md)
	RADNODE_RELIABILITY=full RADNODE_RELIABILITY_FIGURES=$(RELIABILITY_FIGURES) \
		$(BIN)/python -m pytest tests/reliability $(PYTEST_ARGS)

test-all: install system-deps ohif  ## everything, slow tests included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install system-deps  ## ingest benchmark: radnode vs dcmtk storescp vs Orthanc
	$(BIN)/python benchmarks/ingest.py

lint: install  ## ruff and mypy on the packages
	$(BIN)/pip install --quiet ruff mypy
	$(BIN)/ruff check radnode dimse_scp dicomweb ai_node viewer_plugin pacs_link
	$(BIN)/mypy

clean:
	rm -rf $(VENV) radnode-data .pytest_cache
