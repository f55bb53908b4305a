"""sqlite3 bags as ROS 2 Humble's `ros2 bag` reads them (docs/REPLAY.md, docs/DISTROS.md).

Humble's rosbag2 (0.15.x) has no mcap plugin unless ros-humble-rosbag2-storage-mcap is installed,
so `vla_replay ... --storage sqlite3` is the Humble-safe output. There is no Humble here, so this
checks the bag against what Humble's reader does, from its sources (rosbag2 tag 0.15.12):
metadata_io.cpp decodes metadata.yaml of any version (fields by version; offered_qos_profiles as a
YAML *string* of integer enums, which metadata version 9 replaced by a list -- hence version 8);
sqlite_storage.cpp reads the schema version, the named topics columns, and the messages by a
JOIN on topics ordered by timestamp and id.
"""

from __future__ import annotations

import sqlite3

import yaml

from mobile_vla_node.replay import bagio
from mobile_vla_node.replay.cli import main

QOS_INTS = ("history", "depth", "reliability", "durability", "liveliness")
QOS_TIMES = ("deadline", "lifespan", "liveliness_lease_duration")


def humble_metadata(bag) -> dict:
    """metadata.yaml checked field by field as Humble's decoder reads it; returns it."""
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8, "Humble reads offered_qos_profiles only as v4-v8 write it"
    assert meta["storage_identifier"] == "sqlite3"
    assert int(meta["duration"]["nanoseconds"]) >= 0
    assert int(meta["starting_time"]["nanoseconds_since_epoch"]) > 0
    assert isinstance(meta["compression_format"], str)
    assert isinstance(meta["compression_mode"], str)
    assert all(isinstance(p, str) for p in meta["relative_file_paths"])
    for info in meta["files"]:  # version >= 5
        assert isinstance(info["path"], str) and int(info["message_count"]) >= 0
        int(info["starting_time"]["nanoseconds_since_epoch"]), int(info["duration"]["nanoseconds"])
    for topic in meta["topics_with_message_count"]:
        tm = topic["topic_metadata"]
        assert all(isinstance(tm[k], str) for k in ("name", "type", "serialization_format"))
        assert tm["serialization_format"] == "cdr"
        assert isinstance(tm["offered_qos_profiles"], str)  # version >= 4: a YAML string
        for qos in yaml.safe_load(tm["offered_qos_profiles"]):
            assert all(type(qos[k]) is int for k in QOS_INTS), qos
            assert all(type(qos[k][part]) is int for k in QOS_TIMES for part in ("sec", "nsec"))
            assert type(qos["avoid_ros_namespace_conventions"]) is bool
        assert int(topic["message_count"]) >= 0
    return meta


def humble_rows(db) -> tuple[list, dict]:
    """(messages as Humble's sqlite3 plugin selects them, {topic: type})."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (schema,) = con.execute("SELECT schema_version FROM schema").fetchone()
        assert int(schema) >= 3  # read, never refused; >= 3: offered_qos_profiles is there
        columns = {row[1] for row in con.execute("PRAGMA table_info(topics)")}
        assert {"id", "name", "type", "serialization_format", "offered_qos_profiles"} <= columns
        types = dict(con.execute("SELECT name, type FROM topics ORDER BY id"))
        rows = con.execute(
            "SELECT data, timestamp, topics.name, messages.id FROM messages "
            "JOIN topics ON messages.topic_id = topics.id "
            "ORDER BY messages.timestamp, messages.id").fetchall()
    finally:
        con.close()
    return rows, types


def test_make_sample_sqlite3_reads_as_humble_reads_it(tmp_path, capsys):
    bag = tmp_path / "humble_bag"
    assert main(["make-sample", "--out", str(bag), "--storage", "sqlite3", "--duration", "2",
                 "--fps", "5", "--width", "64", "--height", "48"]) == 0
    assert "(sqlite3)" in capsys.readouterr().out
    meta = humble_metadata(bag)
    assert not list(bag.glob("*.mcap"))
    (db_name,) = meta["relative_file_paths"]
    rows, types = humble_rows(bag / db_name)
    assert len(rows) == meta["message_count"] > 0
    counts = {t["topic_metadata"]["name"]: t["message_count"]
              for t in meta["topics_with_message_count"]}
    assert {name: sum(r[2] == name for r in rows) for name in counts} == counts
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)
    for data, _, name, _ in rows:  # every message is valid CDR of its recorded type
        msg = bagio.deserialize(data, types[name])
        if types[name] == bagio.IMAGE:
            assert (msg.height, msg.width, msg.encoding) == (48, 64, "rgb8")
            assert len(msg.data) == msg.step * msg.height


def test_recorded_outputs_in_sqlite3_read_as_humble_reads_them(tmp_path):
    """`vla_replay play --record OUT --record-storage sqlite3` writes raw CDR through BagWriter;
    the same path with the node's output types."""
    bag = tmp_path / "rec"
    twist = bagio.twist_msg([0.2, 0.0, -0.1])
    with bagio.BagWriter(bag, "sqlite3") as writer:
        for i in range(3):
            writer.write_raw("/cmd_vel", bagio.TWIST, 10**9 + i * 50_000_000,
                             bagio.serialize(twist, bagio.TWIST))
        writer.write("/vla/enable", bagio.BOOL, 10**9, bagio.bool_msg(False))
    meta = humble_metadata(bag)
    rows, types = humble_rows(bag / meta["relative_file_paths"][0])
    assert [name for _, _, name, _ in rows] == ["/cmd_vel", "/vla/enable", "/cmd_vel",
                                                "/cmd_vel"]
    assert bagio.twist_values(bagio.deserialize(rows[0][0], types["/cmd_vel"])) == \
        (0.2, 0.0, -0.1)
    # the node's QoS is recorded, so `ros2 bag play` offers what the node offered
    qos = {t["topic_metadata"]["name"]: yaml.safe_load(t["topic_metadata"]
                                                       ["offered_qos_profiles"])[0]
           for t in meta["topics_with_message_count"]}
    assert qos["/vla/enable"]["durability"] == 1  # transient local (rmw enum)
    assert qos["/cmd_vel"]["reliability"] == 1  # reliable
