# What people and CI run. `make demo` and `make test` each build .venv from nothing on a
# fresh machine with Python 3.11, and are quick when it is already there.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU frameworks ride along so the backend tests and the demo run everywhere; the wheels
# are CPU builds (torch is pinned to its CPU wheel). GPU extras (onnx-gpu, tensorrt) are not.
EXTRAS := worker,onnx,operator,sandbox,dev,torch,tensorflow,openvino

.PHONY: demo demo-worker test test-all test-standing lint crds generate bench bench-peers models clean venv images observability

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

models: $(STAMP)
	$(BIN)/python examples/build_models.py examples/models
	$(BIN)/python examples/build_framework_models.py examples/models

# The operator's tour on a local fleet (polyserve sandbox); the worker alone: demo-worker.
demo: $(STAMP)
	$(BIN)/python examples/demo.py

demo-worker: $(STAMP)
	$(BIN)/python examples/demo_worker.py

lint: $(STAMP)
	$(BIN)/ruff check worker operator sandbox tests e2e bench examples
	$(BIN)/ruff format --check worker operator sandbox tests e2e bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# Default run: everything but tests marked slow. pytest exit 5 (no tests ran) fails.
test: lint
	$(BIN)/python -m pytest -m "not slow" -q

test-all: lint
	$(BIN)/python -m pytest -q

# The standing slow tests CI runs after `make test` (about 14 minutes): 10 minutes of mixed
# traffic with RSS and descriptors flat, 20 SIGTERMs under load without an unanswered
# request, the operator SIGKILLed 50 times mid-reconcile ending as a quiet run.
test-standing: $(STAMP)
	$(BIN)/python -m pytest -m slow -q tests/worker/test_soak.py tests/worker/test_draining.py e2e/test_faults.py

# Generated install files, each from its one source: the CRDs (crds/ and the Helm chart's
# templates/crds/) from operator/polyserve_operator/api.py, the RBAC of manifests/ and of the
# chart from permissions.py, the chart's values.yaml, values.schema.json and _settings.tpl from
# chart_values.py and the operator's settings.py. Tests fail when a committed copy drifts.
# `make crds` is the same (what it was called when it wrote only crds/).
crds generate: $(STAMP)
	$(BIN)/python -m polyserve_operator.generate .

bench: $(STAMP)
	$(BIN)/python bench/run.py --out bench/RESULTS.md
	$(BIN)/python bench/frameworks.py --out bench/RESULTS.md
	$(BIN)/python bench/extensions.py --out bench/RESULTS.md
	$(BIN)/python bench/hardening.py --out bench/RESULTS.md
	$(BIN)/python bench/sandbox_api.py --out bench/RESULTS.md

# Our worker and Triton (tritonserver from the nvidia-pytriton wheel, fetched into
# ~/.cache/polyserve-peers) side by side on the same models and load; waits for a quiet
# machine (1-min load < 0.5) first. About 15 minutes; not part of `make test`.
bench-peers: $(STAMP)
	$(BIN)/python bench/peers.py --out bench/RESULTS.md

# The operator and CPU worker images, built for real with buildah on a local Debian base
# (root, and apt-get install -y --no-install-recommends buildah debootstrap), then run: the
# worker serves an inference, the operator renders an example. Sizes go to bench/IMAGES.md.
# About 15 minutes the first time; slow, so not part of `make test`.
images: $(STAMP)
	POLYSERVE_IMAGE_SIZES=bench/IMAGES.md $(BIN)/python -m pytest -m slow -q -p no:cacheprovider tests/images

# deploy/observability/rules.yaml is written from alerts.yaml (a test fails on drift).
observability: $(STAMP)
	$(BIN)/python -m tests.observability.rules_file --write

clean:
	rm -rf $(VENV) examples/models .polyserve-sandbox .pytest_cache .mypy_cache .ruff_cache
