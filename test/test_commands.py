import pytest

from mobile_vla_node.core.commands import CommandFilter, normalize


@pytest.mark.parametrize("text", ["stop", "STOP!", "Please stop now.", "halt", "do not move",
                                  "Don't move", "don’t move", "정지", "멈춰", "여기서 멈춰요",
                                  "go to the box and then stop"])
def test_stop_phrases(text):
    assert CommandFilter().check(text).action == "stop"


@pytest.mark.parametrize("text", ["go to the red box", "turn left", "move forward slowly",
                                  "stopwatch on the table", "go to the bus stop sign"])
def test_driving_instructions(text):
    verdict = CommandFilter().check(text)
    # "bus stop sign" contains the word "stop": the filter errs on the side of stopping.
    assert verdict.action == ("stop" if "bus stop" in text else "drive"), verdict


@pytest.mark.parametrize("text, reason", [
    ("🚀🚀🚀", "no words"), ("   ", "no words"), ("12 34", "no words"),
    ("go\ufffd left", "invalid UTF-8"), ("go\x00left", "control characters"),
])
def test_not_instructions_are_rejected(text, reason):
    verdict = CommandFilter().check(text)
    assert verdict.action == "reject" and reason in verdict.reason


def test_allow_list():
    f = CommandFilter(allowed_instructions=["go to the red box", "Turn left."])
    assert f.check("Go to the red box").action == "drive"
    assert f.check("turn left").action == "drive"
    assert f.check("turn right").action == "reject"
    assert f.check("stop").action == "stop"  # stop phrases win over the allow-list


def test_configure_live_and_empty_entries_ignored():
    f = CommandFilter(stop_phrases=["", "wait"])
    assert f.check("stop").action == "drive"
    assert f.check("wait here").action == "stop"
    f.configure(["halt"], [""])
    assert f.check("wait here").action == "drive" and f.allowed == frozenset()


def test_normalize():
    assert normalize("  Go,  to the RED box! ") == "go to the red box"
