"""`ros.qos.InputGate`: each command/enable message applied once, whichever reader has it."""

from __future__ import annotations

from types import SimpleNamespace

from mobile_vla_node.ros.qos import LATCHED_INPUTS, QOS, InputGate, message_key


def info(seq, stamp=None, gid=b"\x01\x02"):
    """rclpy's MessageInfo as Jazzy/Kilted pass it (Jazzy has no publisher_gid)."""
    out = {"source_timestamp": stamp or 1_000 + seq, "received_timestamp": 5,
           "publication_sequence_number": seq, "reception_sequence_number": None}
    if gid is not None:
        out["publisher_gid"] = {"implementation_identifier": "rmw_fastrtps_cpp", "data": gid}
    return out


def test_reader_profiles_cover_every_writer():
    for live, latched in LATCHED_INPUTS.values():
        assert QOS[live].reliable and not QOS[live].transient_local  # any reliable writer
        assert QOS[latched].reliable and QOS[latched].transient_local  # latched history
        assert QOS[live].depth > 1 and QOS[latched].depth > 1  # no skipped sample
    # Our own publishers latch, so they match both readers.
    assert QOS["command"].transient_local and QOS["enable"].transient_local


def test_with_message_info_each_copy_passes_once_in_either_order():
    gate = InputGate()
    assert gate.admit(False, info(1))        # live first
    assert not gate.admit(True, info(1))     # its latched copy
    assert gate.admit(True, info(2))         # latched first
    assert not gate.admit(False, info(2))
    assert gate.duplicates == 2
    # The same sequence number from another writer is another message.
    assert gate.admit(False, info(2, gid=b"\x09"))
    # Jazzy: no writer id, the stamp and sequence number still tell messages apart.
    assert gate.admit(False, info(7, gid=None)) and not gate.admit(True, info(7, gid=None))


def test_the_late_latched_copies_of_one_writer_change_nothing():
    """One writer: enable true, then false (e-stop); its late latched copies are duplicates."""
    gate, applied = InputGate(), []
    for latched, seq in ((False, 1), (False, 2), (True, 1), (True, 2)):
        if gate.admit(latched, info(seq)):
            applied.append(seq)
    assert applied == [1, 2]


def test_an_older_latched_message_of_another_writer_never_undoes_a_newer_one():
    """Writer B's e-stop (stamp 2000) arrives first; writer A's latched `true` (1000) is stale."""
    gate = InputGate()
    assert gate.admit(False, info(1, stamp=2000, gid=b"\x0b"))
    assert not gate.admit(True, info(1, stamp=1000, gid=b"\x0a"))
    # The same through the latched reader (both writers latched before the node started).
    gate = InputGate()
    assert gate.admit(True, info(1, stamp=2000, gid=b"\x0b"))
    assert not gate.admit(True, info(1, stamp=1000, gid=b"\x0a"))
    # A newer latched message still passes, and so does an older live one (arrival order, as
    # with one reader: another machine's clock may lag).
    assert gate.admit(True, info(1, stamp=3000, gid=b"\x0c"))
    assert gate.admit(False, info(2, stamp=1500, gid=b"\x0a"))
    assert gate.duplicates == 0


def test_memory_is_bounded():
    gate = InputGate(remember=4)
    for seq in range(10):
        assert gate.admit(False, info(seq))
    assert len(gate._seen) == 4
    assert not gate.admit(True, info(9))


def test_without_message_info_latched_reader_gives_only_the_start_up_state():
    """Humble: the first latched message passes only before any live one; later ones never."""
    gate = InputGate()
    assert gate.admit(True, None)       # the history a latching publisher held
    assert not gate.admit(True, None)   # its later messages come through the live reader
    assert gate.admit(False, None)
    assert gate.admit(False, None)
    late = InputGate()
    assert late.admit(False, None)
    assert not late.admit(True, None)   # after live traffic: a copy, possibly stale


def test_without_message_info_a_message_ready_on_both_readers_is_applied_once():
    """Humble: the executor takes ready readers in creation order; the live one must be first.

    A latching publisher that starts after the node: its first message reaches both readers in
    one executor wake. Taken latched-first, the gate would apply it twice.
    """
    from mobile_vla_node.ros.node import CALLBACKS_GET_INFO, VlaNode

    class Stub:
        _gated = VlaNode._gated

        def __init__(self):
            self.input_gates, self.input_topics, self.readers = {}, {}, []

        def _subscribe(self, msg_type, topic, callback, qos, report):
            self.readers.append(callback)
            return SimpleNamespace(topic_name=topic)

    stub, applied = Stub(), []
    VlaNode._subscribe_input(stub, "enable", bool, "/vla/enable", applied.append)
    assert len(stub.readers) == 2
    # One wake, creation order, no message info (with info support rclpy passes info=None here).
    for callback in stub.readers:
        callback(*((True, None) if CALLBACKS_GET_INFO else (True,)))
    assert applied == [True]
    assert stub.input_gates["enable"].duplicates == 1


def test_message_key():
    assert message_key(None) is None
    assert message_key({"source_timestamp": 0}) is None
    assert message_key(info(3)) == ((1, 2), 3, 1_003)
