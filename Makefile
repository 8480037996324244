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

# Debian packages of the tests, `make up` and CI: the one list, .ci/apt-packages.txt.
APT_PACKAGES = $(shell sed -e 's/\#.*//' .ci/apt-packages.txt)
# The appliance scenario converges everything default, services, ml_service and alerting
# converge and collects their test directories (molecule/appliance/molecule.yml): CI runs them
# there, not on machines of their own, and builds each image once. `make scenario S=services`
# still runs one alone (services also proves check mode and one-service restarts).
FOLDED_SCENARIOS = services ml_service alerting
ALL_SCENARIOS = $(filter-out shared,$(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
# Quickest first, the appliance last: it is the longest, so the quick one reports first.
SCENARIOS = host_security appliance
PLAYBOOKS = $(strip $(wildcard site.yml) $(wildcard playbooks/*.yml))
PY_DIRS = $(wildcard ml_service workspace tests molecule scripts benchmarks)

.PHONY: task-repeats help deps apt-packages venv grpc-stubs bench test lint yamllint ansible-lint ruff shellcheck syntax unit molecule scenario base-image clean-machines up check-up down bench-edge

help:
	@echo "make test            deps + lint + unit + molecule (everything CI runs; as root)"
	@echo "make up              deps + the whole appliance (site.yml) on a local test machine, 10.213.40.2"
	@echo "make deps            apt-packages + venv (each skips what is already there)"
	@echo "make apt-packages    install the missing Debian packages of .ci/apt-packages.txt (root)"
	@echo "make venv            $(VENV) from requirements/dev.lock (hash-checked), again only when the lock changed"
	@echo "make grpc-stubs      regenerate ml_service/oip/proto/*_pb2*.py from the vendored .proto"
	@echo "make lint            yamllint, ansible-lint, ruff, shellcheck, playbook syntax checks, generated docs"
	@echo "make docs            regenerate docs/variables.md and the alert table of docs/alerting.md"
	@echo "make unit            pytest tests/"
	@echo "make bench           serving benchmark: the API next to the bare stack (a few minutes, wrk)"
	@echo "make bench-edge      the API through Traefik and TLS on the make up machine (MACHINE=...)"
	@echo "make molecule        the scenarios CI runs: $(SCENARIOS)"
	@echo "make scenario S=NAME one scenario (molecule test -s NAME), one of: $(sort $(ALL_SCENARIOS))"
	@echo "make base-image      rebuild the cached Debian 13 root filesystem"
	@echo "make clean-machines  remove every test machine, veth and the NAT table"
	@echo "make check-up        end-to-end checks of that machine (testinfra)"
	@echo "make down            remove that machine"

deps:
	@$(MAKE) --no-print-directory apt-packages
	@$(MAKE) --no-print-directory venv

# Installs only what is missing: with everything there it needs neither root nor the network.
apt-packages:
	@missing=(); for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q ' installed$$' || missing+=("$$p"); \
	done; \
	if (( $${#missing[@]} == 0 )); then echo "apt-packages: all $(words $(APT_PACKAGES)) installed"; exit 0; fi; \
	[[ $$(id -u) -eq 0 ]] || { echo "apt-packages: missing $${missing[*]}; run as root to install them"; exit 1; }; \
	echo "apt-get install $${missing[*]}"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && apt-get install -y -qq --no-install-recommends "$${missing[@]}" >/dev/null

# Rebuilt only when the lock or pyproject.toml is newer than the last install.
venv: $(VENV)/.installed

$(VENV)/.installed: requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements/dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# The Open Inference Protocol's gRPC stubs, checked in, from the vendored .proto (see its SOURCE.md).
grpc-stubs:
	python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. \
	  ml_service/oip/proto/open_inference_grpc.proto

# The serving benchmark of issue 19 (needs wrk, redis-server and two CPUs); each run's figures go
# to artifacts/bench/ and are compared with the previous run. BENCH_ARGS="--soak 60" adds the
# 60 s run at c=32 whose slowest request is reported.
bench: deps
	python benchmarks/service/bench_serving.py $(BENCH_ARGS)

# The same through Traefik with TLS on the running appliance of `make up` (root; MACHINE= names
# another test machine): POST /predict and the OIP infer route at c=32, CPU per request of
# Traefik, the API and Redis from their cgroups.
bench-edge: deps
	python benchmarks/service/bench_edge.py --machine $(or $(MACHINE),mol-appliance) $(BENCH_ARGS)

# Every step runs even when an earlier one fails (one run shows every failure); the time and
# result of each are printed at the end. Only missing dependencies stop it before the tests.
# Each step's output is also kept in artifacts/logs/STEP.log; a failed step's digest (failing
# tests, tasks and findings) is printed again at the very end, where a truncated CI page shows it.
test: deps
	@rc=0; steps=(); failed=(); mkdir -p artifacts/logs; for step in lint unit molecule; do \
	  echo "=== make $$step"; start=$$(date +%s); \
	  if $(MAKE) --no-print-directory $$step 2>&1 | tee "artifacts/logs/$$step.log"; then r=ok; \
	  else r=FAILED; rc=1; failed+=("$$step"); fi; \
	  steps+=("$$(printf '%-9s %5ss  %s' "$$step" "$$(( $$(date +%s) - start ))" "$$r")"); \
	done; \
	for step in "$${failed[@]}"; do \
	  echo "=== what failed in make $$step (artifacts/logs/$$step.log)"; \
	  scripts/failure-digest.sh "artifacts/logs/$$step.log"; \
	done; \
	echo "=== make test steps"; printf '  %s\n' "$${steps[@]}"; exit $$rc

# -k: every linter runs even when an earlier one fails, so one run shows all findings.
lint:
	@$(MAKE) --no-print-directory -k yamllint ansible-lint ruff shellcheck syntax role-docs-check alert-table-check task-repeats

# No Ansible task body twice in roles/, playbooks/ or molecule/ (duplicates does not read YAML).
task-repeats:
	$(BIN)/python scripts/task_repeats.py

yamllint:
	yamllint --strict .

ansible-lint:
	ansible-lint --offline

ruff:
	ruff check $(PY_DIRS)
	ruff format --check $(PY_DIRS)

shellcheck:
	shellcheck -x $(wildcard scripts/*.sh molecule/shared/*.sh) .ci/run

syntax:
	@for pb in $(PLAYBOOKS); do \
	  echo "syntax-check $$pb"; \
	  ansible-playbook --syntax-check -i inventories/local/hosts.yml "$$pb"; \
	done; \
	[[ -n "$(PLAYBOOKS)" ]] || echo "no playbooks yet (site.yml, playbooks/*.yml)"

# Random order (pytest-randomly; the seed is printed, `--randomly-seed=N` repeats
# it) so no test leans on another's side effects. "No tests collected" (exit 5) fails like any
# other error. A hung test fails after pyproject.toml's timeout (it includes fixture setup,
# which on a loaded machine takes minutes for the session's server).
unit:
	pytest -p randomly tests

molecule:
	@failed=""; \
	for s in $(SCENARIOS); do \
	  echo "=== molecule test -s $$s"; start=$$(date +%s); \
	  if molecule test -s "$$s"; then r=passed; else r=FAILED; failed="$$failed $$s"; fi; \
	  echo "=== scenario $$s $$r in $$(( $$(date +%s) - start ))s"; \
	done; \
	[[ -z "$$failed" ]] || { echo "failed scenarios:$$failed"; exit 1; }

scenario:
	@[[ -n "$(S)" ]] || { echo "usage: make scenario S=<name>  (one of: $(sort $(ALL_SCENARIOS)))"; exit 2; }
	molecule test -s $(S)

base-image:
	scripts/nspawn-base-image.sh --force

clean-machines:
	scripts/nspawn-cleanup.sh $(M)

# The whole appliance on a local Debian 13 test machine (mol-appliance, 10.213.40.2): boot it if
# it is not running, apply the test-machine tweaks, then site.yml (inventories/local). Run it
# again to re-converge (idempotent); `make down` removes the machine.
up: deps
	@scripts/nspawn-machine.sh status mol-appliance >/dev/null 2>&1 || \
	  scripts/nspawn-machine.sh create mol-appliance 40 >/dev/null
	ansible-playbook molecule/shared/prepare.yml
	ansible-playbook site.yml

# The appliance scenario's checks (with the services, ml_service and alerting tests it collects)
# against the machine `make up` made. Over SSH like molecule's verify, not --force-ansible:
# Ansible would template the tests' commands, and podman's --format '{{.Name}}' breaks that.
check-up:
	pytest -p no:cacheprovider --hosts=ansible://mol-appliance \
	  --ansible-inventory=inventories/local/hosts.yml molecule/appliance/tests \
	  $(foreach s,$(FOLDED_SCENARIOS),molecule/$(s)/tests)

down:
	scripts/nspawn-machine.sh destroy mol-appliance

# docs/variables.md is generated from each role's meta/argument_specs.yml (the single source).
.PHONY: role-docs role-docs-check
role-docs:
	$(BIN)/python scripts/role_docs.py

role-docs-check:
	$(BIN)/python scripts/role_docs.py --check

# docs/alerting.md's alert table is generated from files/prometheus/alerts.yml (its annotations
# description and runbook are the single source of "why it matters" and "what to do").
.PHONY: docs alert-table alert-table-check
docs: role-docs alert-table

alert-table:
	$(BIN)/python scripts/alert_table.py

alert-table-check:
	$(BIN)/python scripts/alert_table.py --check
