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

.PHONY: help site test venv collection lint sanity unit integration molecule clean

help:
	@echo "make site   run playbooks/site.yml (against a local systemd test host when no INVENTORY is given)"
	@echo "make test   everything CI runs: lint, sanity, unit, integration, molecule"

$(VENV)/.stamp: requirements.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

venv: $(VENV)/.stamp

collection: venv
	@mkdir -p build/collections/ansible_collections/gpufleet
	@ln -sfn $(CURDIR) build/collections/ansible_collections/gpufleet/llm

lint: collection
	ansible-lint --profile production

sanity: collection
	tests/tools/sanity.sh

unit: collection
	pytest -q tests/unit

integration: collection
	pytest -q tests/integration

molecule: collection
	@echo "no molecule scenarios yet"

test: lint sanity unit integration molecule

site: collection
	@echo "site.yml is not written yet: it will converge a local systemd test host"

clean:
	rm -rf build tests/output .pytest_cache
