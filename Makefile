# radnode: the two commands a user needs are `make run` and `make test`.
# The interpreter .venv is made from: the distribution's Python 3.11 where it has one with
# venv (Debian and Ubuntu build theirs with profile-guided and link-time optimisation, as
# python.org's builds and the python:3.11 images are; pyenv and other source builds are
# not unless asked, and spend about a fifth more CPU on the same work, see
# docs/benchmarks.md), else python3. `make install PYTHON=...` picks another.
SYSTEM_PYTHON := /usr/bin/python3.11
PYTHON ?= $(shell $(SYSTEM_PYTHON) -c "import ensurepip, venv" >/dev/null 2>&1 \
	&& echo $(SYSTEM_PYTHON) || echo python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install lock system-deps ohif viewer run test test-all test-reliability bench lint clean

# requirements.lock is every Python package .venv gets (the dependencies, the test
# extra, the build backend), each pinned with `==` and its sha256 hashes, resolved for
# Linux x86_64 and CPython 3.11. `make install` installs exactly that, with this pip.
# requirements-runtime.lock is the same pins less the test extra: the Dockerfile's.
# After editing the dependencies in pyproject.toml run `make lock` and commit both
# (tests/test_install.py fails until then). `make lock` keeps the pins it can; to move
# them: `make lock LOCK_ARGS=--upgrade`, or `LOCK_ARGS='--upgrade-package kfp'` for one.
LOCK         := requirements.lock
RUNTIME_LOCK := requirements-runtime.lock
PIP_VERSION  := 26.3
UV_VERSION   := 0.13.9
UV_VENV      := build/uv-$(UV_VERSION)
LOCK_ARGS    ?=
UV_COMPILE   := $(UV_VENV)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock'
BUILD_REQUIRES := $(PYTHON) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')"

install: $(STAMP)  ## create .venv and install the lock and radnode into it (quick when up to date)

$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

lock: $(UV_VENV)/bin/uv  ## re-resolve the lock files from pyproject.toml (LOCK_ARGS=--upgrade)
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml - --extra test --output-file $(LOCK) $(LOCK_ARGS)
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml - --constraint $(LOCK) --output-file $(RUNTIME_LOCK)

$(UV_VENV)/bin/uv:
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/python -m pip install --quiet uv==$(UV_VERSION)

system-deps:  ## Debian packages the tests use as real peers (dcmtk, Orthanc, dicom3tools)
	./scripts/install-system-deps.sh

# OHIF: npm @ohif/app's prebuilt viewer, pinned to a version and to the integrity the
# registry published for it (npm view @ohif/app@VERSION dist.integrity; the Dockerfile's
# OHIF_SHA512 is the same hash). The tarball is checked before it is unpacked.
OHIF_VERSION   := 3.13.2
OHIF_INTEGRITY := sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
OHIF_TARBALL   := ohif-app-$(OHIF_VERSION).tgz
OHIF_DIST      := build/ohif/package/dist

ohif: $(OHIF_DIST)/index.html  ## fetch the prebuilt OHIF viewer (npm @ohif/app, ~50 MB, checked) into build/ohif

$(OHIF_DIST)/index.html: | $(STAMP)
	rm -rf build/ohif.tmp && mkdir -p build/ohif.tmp
	cd build/ohif.tmp && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null
	$(BIN)/python -m viewer_plugin.ohif.integrity build/ohif.tmp/$(OHIF_TARBALL) '$(OHIF_INTEGRITY)'
	cd build/ohif.tmp && tar xzf $(OHIF_TARBALL) && rm $(OHIF_TARBALL)
	test -f build/ohif.tmp/package/dist/index.html
	rm -rf build/ohif && mv build/ohif.tmp build/ohif
	touch $@

viewer: install ohif  ## OHIF alone on :3000 (radnode viewer) beside a running node; `make run` needs no second process
	$(BIN)/radnode viewer

run: install ohif  ## the node and its viewer: SCP :11112, HTTP :8080 (review /ui/, OHIF /viewer/), worker
	RADNODE_OHIF_DIR=$(CURDIR)/$(OHIF_DIST) $(BIN)/radnode serve --log-format text

test: install system-deps ohif  ## the default suite (about 20 minutes on 2 cores; OHIF for its browser tests)
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

lint: install  ## ruff and mypy on the packages, tests and benchmarks; the import contracts
	$(BIN)/ruff check radnode radnode_core dimse_scp dicomweb ai_node viewer_plugin pacs_link \
		tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) radnode-data .pytest_cache
