# rescueui — developer entry points. See README.md.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: help venv run run-real test test-fast lint format bench deps clean live-image live-test

help:
	@echo "make run         demo app (no real disks touched)"
	@echo "make run-real    the app on this machine's real disks (root)"
	@echo "make deps        install Debian packages and start udev (root)"
	@echo "make test        full test suite (root + udev for the disk tests)"
	@echo "make lint        ruff"
	@echo "make bench       benchmarks against dd, zstd|dd, bmaptool, qemu-img (root)"
	@echo "make live-image  bootable ISO in live-image/out/ (root)"
	@echo "make live-test   boot the ISO in QEMU and restore unattended (root)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rescueui --demo

run-real: $(STAMP)
	$(VENV)/bin/rescueui

deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$(grep -v '^#' .ci/packages.txt)
	pgrep -x systemd-udevd >/dev/null || /lib/systemd/systemd-udevd --daemon
	udevadm trigger && udevadm settle --timeout=60

test: $(STAMP)
	$(PY) -m pytest -q --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check rescueui tests bench
	$(VENV)/bin/ruff format --check rescueui tests bench

format: $(STAMP)
	$(VENV)/bin/ruff format rescueui tests bench
	$(VENV)/bin/ruff check --fix rescueui tests bench

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info

live-image:
	COMPRESS="$(COMPRESS)" live-image/build.sh

live-test:
	$(MAKE) venv
	$(PYTHON) live-image/boot_test.py
