# The README's two commands: `make quickstart` and `make test`. Both build .venv from this repo's own files.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# glibc allocator settings (NOTES-cpu-training.md): must be in the environment before Python starts.
export MALLOC_MMAP_THRESHOLD_ := 4294967296
export MALLOC_TRIM_THRESHOLD_ := 68719476736
export MALLOC_TOP_PAD_ := 1073741824
# libgomp spinning at barriers: 10000 rounds keep 2-thread torch fast when another process competes (bench/cli.py).
export GOMP_SPINCOUNT ?= 10000
export HF_HUB_OFFLINE := 1

.PHONY: venv quickstart test gates ci-baseline bench system-packages clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@$(MAKE) --no-print-directory system-packages
	touch $(STAMP)

# Optional Debian data (Fashion-MNIST suite); installed when we are root, otherwise explained.
system-packages:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
	  && echo "installed dataset-fashion-mnist" \
	  || echo "note: could not install dataset-fashion-mnist (only suites/fashion.yaml needs it)"; \
	else echo "note: suites/fashion.yaml needs 'apt-get install dataset-fashion-mnist' (as root)"; fi

quickstart: $(STAMP)
	$(BIN)/bench run suites/quickstart.yaml

# The tests, then the CI gates: the ci suite on committed checkpoints, compared with the baseline.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=20 tests
	$(BIN)/bench validate suites/*.yaml
	@$(MAKE) --no-print-directory gates

gates: $(STAMP)
	$(BIN)/bench run suites/ci.yaml --out runs/ci --fresh --quiet
	$(BIN)/bench compare runs/ci results/baselines/ci.csv

# Refresh the committed CI checkpoints (the quickstart recipe) and the baseline; review the diff.
ci-baseline: $(STAMP)
	$(BIN)/python -m bench.baseline --recipe suites/quickstart.yaml --out results/baselines/ci-checkpoints
	$(BIN)/bench run suites/ci.yaml --out runs/ci --fresh --quiet
	cp runs/ci/results.csv results/baselines/ci.csv

bench: $(STAMP)
	$(BIN)/python -m pytest -q -s -p no:cacheprovider benchmarks

clean:
	rm -rf $(VENV) runs
