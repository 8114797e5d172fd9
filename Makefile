PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-all bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ttc demo

test: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q -n 2 --dist loadfile

test-all: $(STAMP)
	JAX_PLATFORMS=cpu $(BIN)/python -m pytest -q -n 2 --dist loadfile -m ""

bench: $(STAMP)
	$(BIN)/python benchmarks/ttt_layer.py
	$(BIN)/python benchmarks/chinchilla_fit.py
	$(BIN)/python benchmarks/ttt_accuracy.py
	$(BIN)/python benchmarks/bon_sampler.py
	$(BIN)/python benchmarks/ttt_decode.py
	$(BIN)/python benchmarks/kernels.py --quick
	$(BIN)/python benchmarks/data_loading.py
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) build *.egg-info
