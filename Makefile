PYTHON ?= python3

.PHONY: install test demo

# CPU install: pins the CPU build of torch first, so that pip never pulls a multi-GB CUDA build. That build comes
# without Triton, which the tests need on Linux to run the Triton kernels under its interpreter and to compile them
# for sm_90 offline; 3.6 is the release CUDA builds of torch 2.11 ship.
install:
	$(PYTHON) -m pip install torch==2.13.0 "triton==3.6.0; platform_system == 'Linux' and platform_machine == 'x86_64'"
	$(PYTHON) -m pip install -e ".[test]"

test:
	$(PYTHON) -m pytest -q -ra tests

# The main job: install, then train, evaluate and run the chest X-ray lung bundle on its demo data.
demo: install
	$(PYTHON) -m monai_mamba_nets demo
