# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# torch is pinned: the CPU build of 2.13.0 installs from local disk; an unpinned torch pulls CUDA.
TORCH := torch==2.13.0
SUM := $(shell cksum < pyproject.toml | cut -d' ' -f1)
DEMO_STAMP := $(VENV)/.stamp-demo-$(SUM)
TEST_STAMP := $(VENV)/.stamp-test-$(SUM)
# the C binning kernel, rebuilt in place when its source changes (the first pip install -e builds it too)
KERNEL := $(VENV)/.stamp-kernel

.PHONY: demo test bench verdicts lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PIP) $(TORCH)
	$(PIP) -e '.[demo]' $(TORCH)
	touch $@ $(KERNEL)

# fastai pulls torchvision; PyPI's build does not load beside the CPU torch ("torchvision::nms does not
# exist") and breaks `import lightning` (torchmetrics imports it when installed): remove it.
$(TEST_STAMP): pyproject.toml | $(PY)
	$(PIP) $(TORCH)
	$(PIP) -e '.[test]' $(TORCH)
	$(PY) -m pip uninstall -q -y torchvision
	touch $@ $(DEMO_STAMP) $(KERNEL)

$(KERNEL): twinpeaks/_cbin.c setup.py | $(PY)
	$(PIP) --no-deps -e .
	touch $@

demo: $(DEMO_STAMP) $(KERNEL)
	$(VENV)/bin/twinpeaks demo --out twinpeaks-demo

test: $(TEST_STAMP) $(KERNEL)
	$(PY) -m ruff check setup.py twinpeaks tests bench examples scripts
	$(PY) -m mypy
	$(PY) -m pytest -q

bench: $(TEST_STAMP) $(KERNEL)
	$(PY) bench/overhead.py

# the verdict suite: real small models with known defects, precision and recall of tp.diagnose per finding kind
verdicts: $(TEST_STAMP) $(KERNEL)
	$(PY) bench/verdicts.py

lint: $(TEST_STAMP)
	$(PY) -m ruff check setup.py twinpeaks tests bench examples scripts
	$(PY) -m mypy

clean:
	rm -rf $(VENV) twinpeaks-demo .pytest_cache build twinpeaks/_cbin*.so
