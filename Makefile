# Everything CI runs: `make test`. Molecule needs root on Linux with systemd-nspawn.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
PYTHON ?= python3
export PATH := $(BIN):$(PATH)
# Keep ansible-lint and molecule from reaching for Galaxy (unreachable).
export ANSIBLE_GALAXY_DISABLE_GPG_VERIFY := 1

SCENARIOS = $(sort $(filter-out shared appliance,$(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))))
PLAYBOOKS = $(strip $(wildcard site.yml) $(wildcard playbooks/*.yml))
PY_DIRS = $(wildcard ml_service workspace tests molecule scripts benchmarks)

.PHONY: help venv test lint yamllint ansible-lint ruff shellcheck syntax unit molecule scenario base-image clean-machines up check-up down

help:
	@echo "make venv            create $(VENV) from requirements/dev.lock (hash-checked)"
	@echo "make test            lint + unit + molecule (everything CI runs)"
	@echo "make lint            yamllint, ansible-lint, ruff, shellcheck, playbook syntax checks"
	@echo "make unit            pytest tests/"
	@echo "make molecule        every scenario: $(SCENARIOS)"
	@echo "make scenario S=NAME one scenario (molecule test -s NAME)"
	@echo "make base-image      rebuild the cached Debian 13 root filesystem"
	@echo "make clean-machines  remove every test machine, veth and the NAT table"
	@echo "make up              the whole appliance (site.yml) on a local test machine, 10.213.40.2"
	@echo "make check-up        end-to-end checks of that machine (testinfra)"
	@echo "make down            remove that machine"

venv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements/dev.lock
	$(BIN)/pip install -q --no-deps -e .

test: lint unit molecule

# -k: every linter runs even when an earlier one fails, so one run shows all findings.
lint:
	@$(MAKE) --no-print-directory -k yamllint ansible-lint ruff shellcheck syntax role-docs-check

yamllint:
	yamllint --strict .

ansible-lint:
	ansible-lint --offline

ruff:
	ruff check $(PY_DIRS)
	ruff format --check $(PY_DIRS)

shellcheck:
	shellcheck -x $(wildcard scripts/*.sh) .ci/run

syntax:
	@for pb in $(PLAYBOOKS); do \
	  echo "syntax-check $$pb"; \
	  ansible-playbook --syntax-check -i inventories/local/hosts.yml "$$pb"; \
	done; \
	[[ -n "$(PLAYBOOKS)" ]] || echo "no playbooks yet (site.yml, playbooks/*.yml)"

# pytest exits 5 when it collects no test: accepted here (and only here) while tests/ is empty.
unit:
	@set +e; pytest tests; rc=$$?; set -e; \
	if [[ $$rc -eq 5 ]]; then echo "make unit: no tests collected (pytest exit 5), accepted"; exit 0; fi; \
	exit $$rc

molecule:
	@failed=""; \
	for s in $(SCENARIOS); do \
	  echo "=== molecule test -s $$s"; start=$$(date +%s); \
	  if molecule test -s "$$s"; then r=passed; else r=FAILED; failed="$$failed $$s"; fi; \
	  echo "=== scenario $$s $$r in $$(( $$(date +%s) - start ))s"; \
	done; \
	[[ -z "$$failed" ]] || { echo "failed scenarios:$$failed"; exit 1; }

scenario:
	@[[ -n "$(S)" ]] || { echo "usage: make scenario S=<name>  (one of: $(SCENARIOS))"; exit 2; }
	molecule test -s $(S)

base-image:
	scripts/nspawn-base-image.sh --force

clean-machines:
	scripts/nspawn-cleanup.sh $(M)

# The whole appliance on a local Debian 13 test machine (mol-appliance, 10.213.40.2): boot it if
# it is not running, apply the test-machine tweaks, then site.yml (inventories/local). Run it
# again to re-converge (idempotent); `make down` removes the machine.
up:
	@scripts/nspawn-machine.sh status mol-appliance >/dev/null 2>&1 || \
	  scripts/nspawn-machine.sh create mol-appliance 40 >/dev/null
	ansible-playbook molecule/shared/prepare.yml
	ansible-playbook site.yml

# End-to-end checks of the machine `make up` made (testinfra: units, HTTPS through Traefik,
# Prometheus scraping every target).
check-up:
	pytest -p no:cacheprovider --hosts=ansible://mol-appliance \
	  --ansible-inventory=inventories/local/hosts.yml --force-ansible molecule/appliance/tests

down:
	scripts/nspawn-machine.sh destroy mol-appliance

# docs/variables.md is generated from each role's meta/argument_specs.yml (the single source).
.PHONY: role-docs role-docs-check
role-docs:
	$(BIN)/python scripts/role_docs.py

role-docs-check:
	$(BIN)/python scripts/role_docs.py --check
