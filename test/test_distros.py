"""DDS variables per ROS 2 distribution (ros/process.py dds_env; docs/DISTROS.md).

Unit part: which variables each distribution gets. ROS part, on the distribution this venv has
(Kilted in .venv, Jazzy in .venv-jazzy): rclpy.init prints no deprecation warning with them, and
the large-image Fast DDS profile really applies -- its 16 MiB shared-memory segment is mapped by
the participant, and not without the profile.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mobile_vla_node.ros import process
from mobile_vla_node.ros.process import (
    DISCOVERY_RANGE,
    LOCALHOST_ONLY,
    PROFILE_VARS,
    dds_env,
    dds_profile_in_use,
    profile_variable,
    ros_distro,
)

FASTRTPS, FASTDDS = PROFILE_VARS
DDS_KEYS = (LOCALHOST_ONLY, DISCOVERY_RANGE, FASTRTPS, FASTDDS)
REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "config" / "fastdds_large_images.xml"


def dds_part(env: dict) -> dict:
    return {k: env[k] for k in DDS_KEYS if k in env}


@pytest.mark.parametrize(("version", "distro"), [
    ("3.3.16", "humble"), ("4.1.5", "iron"), ("7.1.6", "jazzy"), ("7.1.5", "jazzy"),
    ("9.1.2", "kilted"), ("10.0.1", "kilted")])
def test_distro_from_rclpy_version(monkeypatch, version, distro):
    monkeypatch.setattr(process, "_rclpy_version", lambda: version)
    monkeypatch.setenv("ROS_DISTRO", "humble")  # a stale shell variable loses to rclpy
    assert ros_distro() == distro


def test_distro_from_ros_distro_without_rclpy(monkeypatch):
    monkeypatch.setattr(process, "_rclpy_version", lambda: None)
    monkeypatch.setenv("ROS_DISTRO", "Humble")
    assert ros_distro() == "humble"
    monkeypatch.delenv("ROS_DISTRO")
    assert ros_distro() == ""
    assert dds_part(dds_env({}, profile=False)) == {DISCOVERY_RANGE: "LOCALHOST"}  # newest


@pytest.mark.parametrize(("distro", "expected"), [
    ("humble", {LOCALHOST_ONLY: "1", FASTRTPS: str(PROFILE)}),
    ("iron", {DISCOVERY_RANGE: "LOCALHOST", FASTRTPS: str(PROFILE)}),
    ("jazzy", {DISCOVERY_RANGE: "LOCALHOST", FASTRTPS: str(PROFILE)}),
    ("kilted", {DISCOVERY_RANGE: "LOCALHOST", FASTDDS: str(PROFILE)}),
    ("rolling", {DISCOVERY_RANGE: "LOCALHOST", FASTDDS: str(PROFILE)})])
def test_each_distribution_gets_only_the_variables_it_reads(monkeypatch, distro, expected):
    monkeypatch.setattr(process, "fastdds_profile", lambda: PROFILE)
    # whatever the shell had, in both spellings, ends up as exactly these
    for start in ({}, {LOCALHOST_ONLY: "1", DISCOVERY_RANGE: "LOCALHOST", FASTRTPS: str(PROFILE),
                       FASTDDS: str(PROFILE)}):
        env = dds_env({"PATH": "/usr/bin", **start}, distro=distro)
        assert dds_part(env) == expected, (distro, start)
        assert env["PATH"] == "/usr/bin"


@pytest.mark.parametrize(("distro", "user", "expected"), [
    # a profile set under the other name moves to the one this Fast DDS reads
    ("jazzy", {FASTDDS: "/mine.xml"}, {FASTRTPS: "/mine.xml", DISCOVERY_RANGE: "LOCALHOST"}),
    ("kilted", {FASTRTPS: "/mine.xml"}, {FASTDDS: "/mine.xml", DISCOVERY_RANGE: "LOCALHOST"}),
    ("humble", {FASTDDS: "/mine.xml"}, {FASTRTPS: "/mine.xml", LOCALHOST_ONLY: "1"}),
    # an empty value (Fast DDS defaults, docs/BENCHMARKS.md) is kept, not replaced
    ("kilted", {FASTDDS: ""}, {FASTDDS: "", DISCOVERY_RANGE: "LOCALHOST"}),
    ("jazzy", {FASTDDS: ""}, {FASTRTPS: "", DISCOVERY_RANGE: "LOCALHOST"}),
    # the discovery setting the user chose, in the spelling this distribution reads
    ("jazzy", {LOCALHOST_ONLY: "1"}, {DISCOVERY_RANGE: "LOCALHOST"}),
    ("jazzy", {LOCALHOST_ONLY: "0"}, {}),
    ("kilted", {DISCOVERY_RANGE: "SUBNET", LOCALHOST_ONLY: "1"}, {DISCOVERY_RANGE: "SUBNET"}),
    ("humble", {DISCOVERY_RANGE: "SUBNET"}, {LOCALHOST_ONLY: "0"}),
    ("humble", {LOCALHOST_ONLY: "0", DISCOVERY_RANGE: "LOCALHOST"}, {LOCALHOST_ONLY: "0"})])
def test_user_values_win_in_the_read_spelling(monkeypatch, distro, user, expected):
    monkeypatch.setattr(process, "fastdds_profile", lambda: None)  # only the user's profile
    assert dds_part(dds_env(user, distro=distro)) == expected


def test_loopback_env_applies_to_this_process(monkeypatch):
    for key in DDS_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(LOCALHOST_ONLY, "1")
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(PROFILE))
    monkeypatch.setenv("FASTRTPS_DEFAULT_PROFILES_FILE", str(PROFILE))
    monkeypatch.delenv("ROS_DOMAIN_ID", raising=False)
    env = process.loopback_env(domain=42)
    assert env["ROS_DOMAIN_ID"] == os.environ["ROS_DOMAIN_ID"] == "42"
    assert dds_part(env) == dds_part(dict(os.environ)) == dds_part(dds_env({LOCALHOST_ONLY: "1"}))
    assert dds_part(dict(os.environ)).get(profile_variable()) == str(PROFILE)


def test_this_test_session_has_only_the_variables_of_its_distribution():
    """test/conftest.py applied dds_env: children of any test inherit no deprecated variable.
    (The profile file is the shipped one unless the user set one, even empty, for the run.)"""
    assert dds_part(dict(os.environ)) == dds_part(dds_env())
    used = dds_profile_in_use()
    assert used["variable"] == profile_variable() and used["variable"] in os.environ
    assert sum(v in os.environ for v in PROFILE_VARS) == 1
    assert sum(v in os.environ for v in (LOCALHOST_ONLY, DISCOVERY_RANGE)) == 1


def test_the_shipped_profile_is_found_in_the_source_tree():
    assert process.fastdds_profile().resolve() == PROFILE.resolve()


def test_bench_records_the_profile_variable_in_use():
    from mobile_vla_node.bench.environment import environment

    env = environment(["--mode", "node"])
    assert env["dds_profile"] == dds_profile_in_use()
    assert env["dds_profile"]["variable"] in env["env"]  # the recorded variable is set ...
    other = next(v for v in PROFILE_VARS if v != env["dds_profile"]["variable"])
    assert other not in env["env"]  # ... and the ignored spelling is not


# --- ROS layer: the distribution of this venv -------------------------------------------------

CHILD = r"""
import json, sys
import rclpy
from std_msgs.msg import String
rclpy.init()
node = rclpy.create_node("dds_env_probe")
pub = node.create_publisher(String, "dds_env_probe", 10)
sub = node.create_subscription(String, "dds_env_probe", lambda m: None, 10)
segments = {}
for line in open("/proc/self/maps"):
    parts = line.split()
    if len(parts) >= 6 and parts[5].startswith("/dev/shm/fast") and "_port" not in parts[5]:
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        segments[parts[5]] = segments.get(parts[5], 0) + hi - lo
node.destroy_node()
rclpy.shutdown()
print("SEGMENTS " + json.dumps(segments))
"""


def segment_size() -> int:
    """The shared-memory segment size the shipped profile asks for."""
    return int(re.search(r"<segment_size>(\d+)</segment_size>", PROFILE.read_text()).group(1))


def run_child(env: dict) -> tuple[dict, str]:
    """(shared-memory segments the child's participant mapped: path -> bytes, all its output)."""
    env = dict(env, ROS_DOMAIN_ID=os.environ["VLA_TEST_OTHER_DOMAIN"], PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("SEGMENTS "))
    return json.loads(line.split(" ", 1)[1]), text


def fast_dds_rmw() -> bool:
    return os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") == "rmw_fastrtps_cpp"


def shipped_env() -> dict:
    """This session's environment with the shipped profile, whatever profile the user set."""
    return dds_env({k: v for k, v in os.environ.items() if k not in PROFILE_VARS})


@pytest.fixture(scope="module")
def default_run():
    if not fast_dds_rmw():
        pytest.skip(f"RMW_IMPLEMENTATION={os.environ['RMW_IMPLEMENTATION']}: not Fast DDS")
    return run_child(shipped_env())


def test_no_deprecation_warning_at_init(default_run):
    _, text = default_run
    assert "deprecated" not in text.lower(), text


def test_large_image_profile_applies(default_run):
    segments, text = default_run
    assert segments, f"no Fast DDS shared-memory segment was mapped:\n{text}"
    assert max(segments.values()) >= segment_size(), (ros_distro(), segments)
    # the control: the same participant without the profile maps only default-sized segments
    plain, _ = run_child(dds_env(dict(shipped_env(), **{profile_variable(): ""})))
    assert plain and max(plain.values()) < segment_size(), plain


def test_the_other_spelling_as_this_distribution_treats_it():
    """Jazzy (Fast DDS 2.14) ignores FASTDDS_DEFAULT_PROFILES_FILE without a word; Kilted's rmw
    still applies FASTRTPS_DEFAULT_PROFILES_FILE but warns that it is deprecated; Jazzy warns
    about ROS_LOCALHOST_ONLY. These are why dds_env sets one spelling only."""
    if not fast_dds_rmw():
        pytest.skip("not Fast DDS")
    distro = ros_distro()
    if distro not in ("jazzy", "kilted"):
        pytest.skip(f"facts recorded for jazzy and kilted, this is {distro!r}")
    base = {k: v for k, v in os.environ.items() if k not in DDS_KEYS}
    base[DISCOVERY_RANGE] = "LOCALHOST"
    other = FASTDDS if distro == "jazzy" else FASTRTPS
    segments, text = run_child({**base, other: str(PROFILE)})
    if distro == "jazzy":
        assert max(segments.values()) < segment_size(), segments
        assert "deprecated" not in text.lower(), text
        _, warned = run_child({**base, FASTRTPS: str(PROFILE), LOCALHOST_ONLY: "1"})
        assert "ROS_LOCALHOST_ONLY is deprecated" in warned, warned
    else:
        assert max(segments.values()) >= segment_size(), segments
        assert "FASTRTPS_DEFAULT_PROFILES_FILE" in text and "deprecated" in text, text
