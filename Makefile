# The two set-up commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-kernels test-tools install bench clean

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

# exiftool (Debian's libimage-exiftool-perl) is the independent reader the metadata tests check outputs with, and
# libvips' tools (libvips-tools) the one the pyramid tests open each level with; installed here when missing and
# this user may (root, or sudo without a password); without them those tests skip
test-tools:
	@command -v exiftool >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
		( $$SUDO apt-get install -y -q libimage-exiftool-perl >/dev/null 2>&1 || \
		  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q libimage-exiftool-perl >/dev/null 2>&1; } ) \
		|| echo "note: could not install exiftool (libimage-exiftool-perl); the metadata read-back tests will skip"; }
	@command -v vipsheader >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
		( $$SUDO apt-get install -y -q libvips-tools >/dev/null 2>&1 || \
		  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q libvips-tools >/dev/null 2>&1; } ) \
		|| echo "note: could not install libvips-tools; the libvips pyramid test will skip"; }

# The numeric core's reruns under the other CPU kernels are tests too (tests/test_cpu_kernels.py), so they run beside
# the rest instead of after it.
test: $(STAMP) test-tools
	$(BIN)/python -m pytest -q --durations=15 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# Every test that needs no Ray (the core, storage, inputs, ledger, the colorize stages run by hand, the CLI's flags, ...):
# about 1.5 minutes on 2 cores, in one process. RAYCOLOR_NO_RAY=1 tells tests/conftest.py to leave out the tests
# marked slow (Ray or a subprocess) or ray (Ray's library or a cluster), and to make `import ray` fail, so a test
# that needs Ray without saying so fails here instead of starting Ray.
test-fast: $(STAMP) test-tools
	RAYCOLOR_NO_RAY=1 $(BIN)/python -m pytest -q -p no:xdist

# The torch-kernel tests once more under each CPU kernel torch has for this machine (default and avx2 always, avx512
# where the CPU has it): SIMD kernels round differently, and a newcomer's CPU must not surprise CI. Each run
# checks that torch really uses the kernel asked for (tests/test_color.py::test_runs_on_the_cpu_kernel_asked_for).
# `make test` runs them under all but the kernel its main run used (tests/test_cpu_kernels.py); the numeric core's
# list is tests/cpu_kernels.py's. KERNELS=--others leaves out the kernel torch picks here (or ATEN_CPU_CAPABILITY's).
KERNELS ?=
test-kernels: $(STAMP)
	@set -e; for cap in $$($(BIN)/python tests/cpu_kernels.py $(KERNELS)); do \
		echo "== numeric core with ATEN_CPU_CAPABILITY=$$cap"; \
		ATEN_CPU_CAPABILITY=$$cap $(BIN)/python -m pytest -q -p no:xdist -p no:cacheprovider -m "not kernel_free" \
			$$($(BIN)/python tests/cpu_kernels.py --tests); \
	done

bench: $(STAMP)
	$(BIN)/python bench/colorize_throughput.py

clean:
	rm -rf demo-output .pytest_cache
