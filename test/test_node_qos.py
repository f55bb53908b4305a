"""Commands, e-stops and parameters as other ROS programs see them, over real DDS.

Publishers run as their own processes (test/qos_publisher.py) with the QoS a user's node or
``ros2 topic pub`` uses: volatile (the default), transient-local latched before the node
started, and best effort (incompatible, so it must show in diagnostics). Parameters go through
the node's real parameter services: types stay what the table says, and a dump in the format of
``ros2 param dump`` loads back into a relaunched node unchanged.

Every wait is for an event (a diagnostics value, a printed line), never a time window.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from ros_harness import REPO, Probe, other_domain, ros_env, start_node, stop_process, wait_for_log

PARAMS = {"backend": "null", "diagnostics_period_s": 0.2}
EVENT_TIMEOUT = 60.0  # generous: only reached when something is broken
STARTUP_ALLOWANCE = 30.0  # a publisher process's start before its own --timeout counts


def start_publisher(*args, domain=None, timeout=EVENT_TIMEOUT):
    """test/qos_publisher.py as its own process; returns it once it printed ``published``.

    The publisher gives up by itself (exit 1) when its subscriptions have not matched within
    ``timeout`` (``--timeout``). Its output goes to a file, read without blocking, so even a
    publisher that hangs cannot hold the test past ``timeout`` plus its start-up allowance.
    """
    fd, name = tempfile.mkstemp(prefix="qos_publisher_", suffix=".log")
    log = Path(name)
    with os.fdopen(fd, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "test" / "qos_publisher.py"), *args,
                                 "--timeout", str(timeout)],
                                cwd=REPO, env=ros_env(domain), stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    if wait_for_log(log, "published", timeout=timeout + STARTUP_ALLOWANCE, proc=proc):
        return proc
    stop_process(proc)
    raise AssertionError(f"publisher {args} did not publish: {log.read_text()[-2000:]!r}")


def test_a_publisher_that_never_matches_gives_up():
    """Readers it never gets: qos_publisher.py exits 1 and start_publisher raises, no hang."""
    with pytest.raises(AssertionError, match="gave up after 3 s"):
        start_publisher("--durability", "volatile", "--wait-subscriptions", "100", "--enable",
                        "true", domain=other_domain(), timeout=3.0)


def values_of(probe, status: str) -> dict:
    found = probe.latest_diagnostics().get(f"vla_node: {status}")
    return {kv.key: kv.value for kv in found.values} if found else {}


def wait_value(probe, status: str, key: str, expected) -> None:
    ok = probe.wait_for(lambda: expected(values_of(probe, status).get(key)) if callable(expected)
                        else values_of(probe, status).get(key) == expected,
                        timeout=EVENT_TIMEOUT)
    assert ok, (key, values_of(probe, status))


@pytest.fixture(scope="module")
def latched_then_node(tmp_path_factory):
    """A latching publisher (command + e-stop) that was up before the node, then the node."""
    publisher = start_publisher("--durability", "transient_local", "--enable", "false",
                                "--command", "go to the red box")
    log = tmp_path_factory.mktemp("node") / "node.log"
    proc = start_node(PARAMS, log_path=log)
    probe = Probe("qos_probe")
    try:
        assert wait_for_log(log, "publishing", proc=proc), log.read_text()
        assert probe.wait_for(lambda: values_of(probe, "inputs"), timeout=EVENT_TIMEOUT)
        yield proc, probe, publisher, log
    finally:
        probe.close()
        stop_process(proc)
        stop_process(publisher)


def test_latched_command_and_estop_from_before_the_node_arrive(latched_then_node):
    proc, probe, publisher, log = latched_then_node
    wait_value(probe, "inputs", "command", "go to the red box")
    wait_value(probe, "control", "enabled", "False")
    assert "DISABLED (e-stop) by topic" in log.read_text()
    stop_process(publisher)


def test_default_qos_publisher_reaches_the_node(latched_then_node):
    """What `ros2 topic pub --once` does: volatile reliable, wait for a reader, publish."""
    proc, probe, _, _ = latched_then_node
    before = values_of(probe, "inputs").get("duplicate_inputs")
    publisher = start_publisher("--durability", "volatile", "--wait-subscriptions", "1",
                                "--enable", "true", "--command", "turn left")
    try:
        wait_value(probe, "inputs", "command", "turn left")
        wait_value(probe, "control", "enabled", "True")
        # A volatile writer reaches the live reader only: nothing to drop.
        assert values_of(probe, "inputs")["duplicate_inputs"] == before
    finally:
        stop_process(publisher)


def test_latching_publisher_messages_apply_once(latched_then_node):
    """A transient-local writer reaches both readers; each message is applied once, in order."""
    proc, probe, _, _ = latched_then_node
    before = int(values_of(probe, "inputs")["duplicate_inputs"])
    commands = ["go to the blue box", "turn right", "go to the red box"]
    args = [a for c in commands for a in ("--command", c)]
    publisher = start_publisher("--durability", "transient_local", "--wait-subscriptions", "2",
                                *args)
    try:
        wait_value(probe, "inputs", "duplicate_inputs", lambda v: int(v) >= before + 3)
        assert values_of(probe, "inputs")["command"] == commands[-1]
        assert int(values_of(probe, "inputs")["duplicate_inputs"]) == before + 3
    finally:
        stop_process(publisher)


def test_incompatible_publisher_shows_in_diagnostics(latched_then_node):
    proc, probe, _, log = latched_then_node
    assert values_of(probe, "inputs")["incompatible_publishers"] == ""
    publisher = start_publisher("--durability", "volatile", "--reliability", "best_effort",
                                "--command", "never arrives")
    try:
        wait_value(probe, "inputs", "incompatible_publishers",
                   lambda v: v and "/vla/command" in v and "RELIABILITY" in v)
        assert values_of(probe, "inputs")["command"] != "never arrives"
        # Ordinary volatile publishers (the previous tests) never counted as incompatible,
        # although the latched reader cannot match them.
        assert "/vla/enable" not in values_of(probe, "inputs")["incompatible_publishers"]
    finally:
        stop_process(publisher)
    # Gone from the graph, gone from diagnostics (DDS itself never reports a writer leaving).
    wait_value(probe, "inputs", "incompatible_publishers", "")


# -- parameters over the real services -----------------------------------------------------

class ParamClient:
    """list/get/set_parameters of /vla_node from a test node in ``domain``."""

    def __init__(self, domain=None):
        self.probe = Probe("param_probe", domain=domain)

    def _call(self, srv_type, name, request):
        client = self.probe.node.create_client(srv_type, f"/vla_node/{name}")
        assert client.wait_for_service(timeout_sec=EVENT_TIMEOUT)
        future = client.call_async(request)
        assert self.probe.wait_for(future.done, timeout=EVENT_TIMEOUT)
        self.probe.node.destroy_client(client)
        return future.result()

    def names(self) -> list:
        from rcl_interfaces.srv import ListParameters

        return sorted(self._call(ListParameters, "list_parameters",
                                 ListParameters.Request()).result.names)

    def get(self, names) -> dict:
        """{name: (ROS type, python value)}."""
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        values = self._call(GetParameters, "get_parameters",
                            GetParameters.Request(names=list(names))).values
        assert len(values) == len(names), (names, values)
        return {n: (v.type, _plain(parameter_value_to_python(v)))
                for n, v in zip(names, values, strict=True)}

    def set(self, name, type_, value):
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        msg = Parameter(name, type_, value).to_parameter_msg()
        return self._call(SetParameters, "set_parameters",
                          SetParameters.Request(parameters=[msg])).results[0]

    def dump(self) -> str:
        """The YAML `ros2 param dump /vla_node` prints (ros2param/verb/dump.py, ros2cli 0.36)."""
        import yaml

        names = self.names()
        params = {}
        for name, (_, value) in self.get(names).items():
            _insert(params, name, value)
        return yaml.dump({"/vla_node": {"ros__parameters": params}},
                         default_flow_style=False) + "\n"  # `print` adds a newline

    def close(self):
        self.probe.close()


def _plain(value):
    import array

    return list(value) if isinstance(value, (array.array, tuple)) else value


def _insert(dictionary, key, value):
    """ros2param's insert_dict: a dotted name becomes nested keys."""
    head, _, rest = key.partition(".")
    if rest:
        _insert(dictionary.setdefault(head, {}), rest, value)
    else:
        dictionary[key] = value


@pytest.fixture
def node_in_other_domain(tmp_path):
    """A node with non-default values, some written as ROS would get them from YAML."""
    domain = other_domain()
    log = tmp_path / "node.log"
    proc = start_node({**PARAMS, "image_timeout_s": 1, "max_linear_x": 0.25,
                       "action_sign": [-1, 1, 1], "autostart": False},
                      log_path=log, domain=domain)
    client = ParamClient(domain)
    try:
        assert wait_for_log(log, "publishing", proc=proc), log.read_text()
        yield proc, client, log
    finally:
        client.close()
        stop_process(proc)


def test_parameter_types_are_static(node_in_other_domain):
    from rclpy.parameter import Parameter

    proc, client, log = node_in_other_domain
    T = Parameter.Type
    got = client.get(["image_timeout_s", "allowed_instructions", "stop_phrases", "action_sign",
                      "warmup_iters", "backend"])
    assert got["image_timeout_s"] == (T.DOUBLE.value, 1.0)  # given as `-p image_timeout_s:=1`
    assert got["allowed_instructions"] == (T.STRING_ARRAY.value, [])  # not a byte array
    assert got["stop_phrases"][0] == T.STRING_ARRAY.value
    assert got["action_sign"] == (T.DOUBLE_ARRAY.value, [-1.0, 1.0, 1.0])
    assert got["warmup_iters"][0] == T.INTEGER.value
    assert got["backend"] == (T.STRING.value, "null")

    # `ros2 param set /vla_node image_timeout_s 1` sends an INTEGER.
    result = client.set("image_timeout_s", T.INTEGER, 2)
    from rclpy.node import Node

    if hasattr(Node, "add_pre_set_parameters_callback"):
        assert result.successful, result.reason  # converted to 2.0 (not on Humble: refused)
        assert client.get(["image_timeout_s"])["image_timeout_s"] == (T.DOUBLE.value, 2.0)
        # `ros2 param set /vla_node allowed_instructions "[]"` sends an empty bool array.
        assert client.set("allowed_instructions", T.STRING_ARRAY, ["turn left"]).successful
        assert client.set("allowed_instructions", T.BOOL_ARRAY, []).successful
        assert client.get(["allowed_instructions"])["allowed_instructions"] == (
            T.STRING_ARRAY.value, [])
    else:
        assert not result.successful
    bad = client.set("image_timeout_s", T.STRING, "fast")
    assert not bad.successful and "type" in bad.reason.lower()
    assert client.get(["image_timeout_s"])["image_timeout_s"][0] == T.DOUBLE.value
    assert not client.set("max_linear_x", T.DOUBLE, -1.0).successful  # range still checked


def test_param_dump_loads_back_unchanged(node_in_other_domain, tmp_path):
    """`ros2 param dump /vla_node > f.yaml`, relaunch with `--params-file f.yaml`, compare."""
    proc, client, log = node_in_other_domain
    names = client.names()
    before = client.get(names)
    dump = tmp_path / "vla_node.yaml"
    dump.write_text(client.dump())
    assert "allowed_instructions: []" in dump.read_text()
    assert stop_process(proc) == 0

    log2 = tmp_path / "relaunched.log"
    proc2 = start_node(extra_args=["--params-file", str(dump)], log_path=log2,
                       domain=other_domain())
    try:
        assert wait_for_log(log2, "publishing", proc=proc2), log2.read_text()
        assert client.names() == names
        after = client.get(names)
        assert after == before, {n: (before[n], after[n]) for n in names if before[n] != after[n]}
    finally:
        stop_process(proc2)


def test_conform_overrides_and_requests():
    """What a params file, `-p` or `ros2 param set` gives rclpy, as the parameter's type."""
    from rclpy.parameter import Parameter

    from mobile_vla_node.core.config import PARAMETERS
    from mobile_vla_node.ros.parameters import conform, conform_requests, ros_type

    T = Parameter.Type
    assert ros_type(PARAMETERS["allowed_instructions"]) == T.STRING_ARRAY
    assert ros_type(PARAMETERS["action_sign"]) == T.DOUBLE_ARRAY
    assert ros_type(PARAMETERS["image_timeout_s"]) == T.DOUBLE
    assert ros_type(PARAMETERS["warmup_iters"]) == T.INTEGER
    one = conform("x", Parameter("x", T.INTEGER, 1), T.DOUBLE)
    assert (one.type_, one.value) == (T.DOUBLE, 1.0)
    sign = conform("x", Parameter("x", T.INTEGER_ARRAY, [-1, 1, 1]), T.DOUBLE_ARRAY)
    assert (sign.type_, sign.value) == (T.DOUBLE_ARRAY, [-1.0, 1.0, 1.0])
    unset = conform("x", Parameter("x", T.NOT_SET, None), T.STRING_ARRAY)  # `x: []` in YAML
    assert (unset.type_, unset.value) == (T.STRING_ARRAY, [])
    empty = conform("x", Parameter("x", T.BOOL_ARRAY, []), T.STRING_ARRAY)
    assert (empty.type_, empty.value) == (T.STRING_ARRAY, [])
    assert conform("x", Parameter("x", T.STRING, "1"), T.DOUBLE) is None
    assert conform("x", Parameter("x", T.DOUBLE, 1.5), T.INTEGER) is None  # no silent rounding
    assert conform("x", Parameter("x", T.BOOL_ARRAY, [True]), T.STRING_ARRAY) is None
    # A set request: converted where it can be, left for rclpy to refuse where it cannot;
    # a delete (NOT_SET) and unknown names pass unchanged.
    out = conform_requests([Parameter("image_timeout_s", T.INTEGER, 2),
                            Parameter("image_timeout_s", T.STRING, "x"),
                            Parameter("allowed_instructions", T.NOT_SET, None),
                            Parameter("other", T.INTEGER, 1)], PARAMETERS)
    assert [(p.type_, p.value) for p in out] == [(T.DOUBLE, 2.0), (T.STRING, "x"),
                                                  (T.NOT_SET, None), (T.INTEGER, 1)]


def test_wrong_kind_in_a_params_file_is_one_clear_error(tmp_path):
    log = tmp_path / "node.log"
    proc = start_node({**PARAMS, "warmup_iters": 1.5}, log_path=log, domain=other_domain())
    assert proc.wait(timeout=EVENT_TIMEOUT) == 2
    text = log.read_text()
    assert "FATAL" in text and "warmup_iters=1.5" in text and "INTEGER" in text, text
