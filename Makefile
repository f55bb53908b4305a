# Two commands on a fresh machine with Python >= 3.10: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Keep all DDS traffic on loopback; pick another domain with `make demo ROS_DOMAIN_ID=7`.
ROS_DOMAIN_ID ?= 77
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_LOCALHOST_ONLY := 1
export ROS_DOMAIN_ID
# Camera-sized frames between processes (see config/fastdds_large_images.xml).
export FASTDDS_DEFAULT_PROFILES_FILE ?= $(CURDIR)/config/fastdds_large_images.xml

.PHONY: demo test test-unit robot-yaml lint venv clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vla_demo --duration 10

test: $(STAMP)
	$(BIN)/python -m pytest -q test

# Fast layer only: pure Python, no DDS, no child processes (markers: test/conftest.py LAYERS).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit test

# config/robot.yaml from the parameter table in mobile_vla_node/core/config.py.
robot-yaml: $(STAMP)
	$(BIN)/python -m mobile_vla_node.ros.params_yaml --output config/robot.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build install log *.egg-info
