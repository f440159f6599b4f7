PYTHON ?= python3

.PHONY: install test demo

# CPU install: pins the CPU build of torch first, so that pip never pulls a multi-GB CUDA build.
install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[test]"

test:
	$(PYTHON) -m pytest -q -ra tests

# The main job: install, then train, evaluate and run the chest X-ray lung bundle on its demo data.
demo: install
	$(PYTHON) -m monai_mamba_nets demo
