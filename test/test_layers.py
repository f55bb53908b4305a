"""Every test file has a layer in test/conftest.py, and the markers are registered."""

import configparser
from pathlib import Path

import conftest

TEST_DIR = Path(__file__).resolve().parent
MARKERS = {"unit", "ros", "slow", "gpu"}


def registered_markers() -> set:
    """Marker names registered in setup.cfg ``[tool:pytest]``."""
    cfg = configparser.ConfigParser()
    cfg.read(TEST_DIR.parent / "setup.cfg")
    lines = cfg["tool:pytest"]["markers"].strip().splitlines()
    return {line.split(":")[0].strip() for line in lines if line.strip()}


def test_markers_are_registered():
    assert MARKERS <= registered_markers()


def test_every_test_file_has_a_layer():
    files = {p.name for p in TEST_DIR.glob("test_*.py")}
    missing = sorted(files - {key.split("::")[0] for key in conftest.LAYERS})
    assert not missing, f"add these to LAYERS in test/conftest.py: {missing}"


def test_layers_name_existing_files_and_known_markers():
    for key, marks in conftest.LAYERS.items():
        assert (TEST_DIR / key.split("::")[0]).is_file(), f"LAYERS entry for a missing file: {key}"
        assert marks and set(marks) <= MARKERS, (key, marks)


def test_unit_layer_excludes_ros_and_slow():
    for key, marks in conftest.LAYERS.items():
        assert not ("unit" in marks and {"ros", "slow"} & set(marks)), key
