# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch's CPU/CUDA wheels are large: pinned here to the versions this project is tested with
	$(BIN)/pip install 'torch==2.14.1' 'torchvision==0.29.1' || $(BIN)/pip install 'torch>=2.4' 'torchvision>=0.19'
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/raycolor demo --output demo-output

# Two pytest workers, each with its own local Ray and S3 server, a test file each at a time (module fixtures
# such as test_chaos's cluster run once; the one-machine fault tests are in test_faults.py so the other worker takes them): most tests wait on process start-up and scheduling, so two share
# 2 cores well (1467 s vs 1711 s for the same suite; docs/performance.md). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

bench: $(STAMP)
	$(BIN)/python bench/colorize_throughput.py

clean:
	rm -rf demo-output .pytest_cache
