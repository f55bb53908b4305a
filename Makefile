# Two commands on a fresh machine with Python >= 3.10: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The local Triton server's own environment (see triton-env below).
TRITON_PYTHON ?= /usr/bin/python3
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
# Keep all DDS traffic on loopback. The demos run in domain 77 (`make demo ROS_DOMAIN_ID=7`); the
# tests reserve free domains of their own (test/conftest.py), so two runs never cross-talk.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_LOCALHOST_ONLY := 1
demo triton-demo: export ROS_DOMAIN_ID ?= 77
# Camera-sized frames between processes (see config/fastdds_large_images.xml).
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_large_images.xml

.PHONY: demo test triton-env triton-demo test-unit robot-yaml lint venv clean gpu-check

venv: $(STAMP)

$(STAMP): requirements.txt setup.py setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vla_demo --duration 10

# The same demo with the policy served by a local Triton server that it starts, kills for a few
# seconds (zeros, ERROR, recovery) and stops (docs/TRITON.md).
triton-demo: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m mobile_vla_node.demo.triton_demo --duration 10 --outage 3

test: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m pytest -q test

# Fast layer only: pure Python, no DDS, no child processes (markers: test/conftest.py LAYERS).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit test

# config/robot.yaml from the parameter table in mobile_vla_node/core/config.py.
robot-yaml: $(STAMP)
	$(BIN)/python -m mobile_vla_node.ros.params_yaml --output config/robot.yaml

# Local Triton Inference Server for the triton tests, `make triton-demo` and `vla_bench --mode
# fleet` (docs/TRITON.md). Built from the system Python (the server's Python-backend stub links
# its libpython3.X.so); needs python3-venv and libpython3.X (apt) on Debian/Ubuntu. ~35-80 s.
triton-env: $(TRITON_STAMP)

$(TRITON_STAMP): requirements-triton-server.txt
	$(TRITON_PYTHON) -m venv $(TRITON_VENV) || { rm -rf $(TRITON_VENV); echo "make triton-env: \
	$(TRITON_PYTHON) cannot create a venv: sudo apt-get install python3-venv libpython3-dev (or \
	set TRITON_PYTHON to a system python3 whose libpython3.X.so is installed)"; exit 1; }
	$(TRITON_VENV)/bin/python -m pip install --quiet -r requirements-triton-server.txt
	touch $(TRITON_STAMP)

# On a GPU machine, from a plain checkout (no venv; its own python3 with torch+CUDA): GPU tests,
# full-size vla_bench eager vs CUDA graphs, environment; files under $(OUT) (docs/GPU.md).
# Refuses (exit 3) without a CUDA GPU.
gpu-check:
	PYTHONPATH=$(CURDIR) $(PYTHON) scripts/gpu_check.py $(if $(OUT),--out $(OUT)) $(GPU_CHECK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(TRITON_VENV) build install log *.egg-info
