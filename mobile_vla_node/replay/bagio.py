"""rosbag2 writing and reading helpers shared by ``vla_replay`` (make-sample, from-h5, --record).

Messages are built and serialized with ``rosbags`` and its ROS 2 Humble typestore (no ROS install
needed); bags are written with rosbags' ``Writer`` (metadata version 8, which Humble-era tools and
rosbags read) in the mcap or sqlite3 storage. Reading goes through `replay.frames.open_bag`
(AnyReader: a bag folder or a single .mcap/.db3 file); reader failures become `BagError` naming
the bag.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..core.config import TopicConfig
from ..ros.qos import QOS
from .frames import BagError, open_bag

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
STRING = "std_msgs/msg/String"
BOOL = "std_msgs/msg/Bool"
TWIST = "geometry_msgs/msg/Twist"
CLOCK = "rosgraph_msgs/msg/Clock"
DIAGNOSTICS = "diagnostic_msgs/msg/DiagnosticArray"
TIMING = "std_msgs/msg/Float64MultiArray"
IMAGE_TYPES = (IMAGE, COMPRESSED)
STORAGES = ("mcap", "sqlite3")
RAW_ENCODINGS = ("rgb8", "bgr8", "mono8")
COMPRESSED_FORMATS = ("jpeg", "png")
BAG_VERSION = 8
FRAME_ID = "camera"
# The "infinite" duration rosbag2 writes for unset QoS times.
_INFINITE = (9223372036, 854775807)


@functools.lru_cache(maxsize=1)
def typestore():
    """The ROS 2 Humble typestore used for every message we build or (de)serialize."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def _cls(msgtype: str):
    return typestore().types[msgtype]


def stamp(t_ns: int):
    """builtin_interfaces/Time for integer nanoseconds."""
    return _cls("builtin_interfaces/msg/Time")(sec=int(t_ns // 10**9), nanosec=int(t_ns % 10**9))


def header(t_ns: int, frame_id: str = FRAME_ID):
    """std_msgs/Header stamped at ``t_ns``."""
    return _cls("std_msgs/msg/Header")(stamp=stamp(t_ns), frame_id=frame_id)


def raw_image_msg(pixels: np.ndarray, encoding: str, t_ns: int, frame_id: str = FRAME_ID):
    """sensor_msgs/Image from pixels already in ``encoding``'s layout (H, W[, C]) uint8."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return _cls(IMAGE)(header=header(t_ns, frame_id), height=height, width=width,
                       encoding=encoding, is_bigendian=0, step=width * channels,
                       data=pixels.reshape(-1))


def compressed_msg(data: bytes, fmt: str, t_ns: int, frame_id: str = FRAME_ID):
    """sensor_msgs/CompressedImage with ``data`` in format ``fmt``."""
    return _cls(COMPRESSED)(header=header(t_ns, frame_id), format=fmt,
                            data=np.frombuffer(data, dtype=np.uint8).copy())


def encode_bgr(bgr: np.ndarray, kind: str, jpeg_quality: int = 90) -> tuple[bytes, str]:
    """Compress a BGR frame to jpeg or png; return (bytes, image_transport format string)."""
    import cv2

    if kind not in COMPRESSED_FORMATS:
        raise ValueError(f"compression {kind!r} is not one of {COMPRESSED_FORMATS}")
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if kind == "jpeg" else []
    ok, buf = cv2.imencode(".jpg" if kind == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {bgr.shape} frame as {kind}")
    return buf.tobytes(), f"bgr8; {kind} compressed bgr8"


def frame_message(rgb: np.ndarray, encoding: str, t_ns: int) -> tuple[str, object]:
    """An RGB frame as (msgtype, message) in ``encoding`` (rgb8, bgr8, mono8, jpeg, png)."""
    import cv2

    if encoding == "rgb8":
        return IMAGE, raw_image_msg(rgb, "rgb8", t_ns)
    if encoding == "bgr8":
        return IMAGE, raw_image_msg(rgb[:, :, ::-1], "bgr8", t_ns)
    if encoding == "mono8":
        return IMAGE, raw_image_msg(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), "mono8", t_ns)
    if encoding in COMPRESSED_FORMATS:
        data, fmt = encode_bgr(np.ascontiguousarray(rgb[:, :, ::-1]), encoding)
        return COMPRESSED, compressed_msg(data, fmt, t_ns)
    raise ValueError(f"encoding {encoding!r} is not one of {RAW_ENCODINGS + COMPRESSED_FORMATS}")


def string_msg(text: str):
    """std_msgs/String."""
    return _cls(STRING)(data=text)


def bool_msg(value: bool):
    """std_msgs/Bool (on /vla/enable: false = e-stop)."""
    return _cls(BOOL)(data=bool(value))


def twist_msg(v) -> object:
    """geometry_msgs/Twist from [linear_x, linear_y, angular_z]."""
    vec = _cls("geometry_msgs/msg/Vector3")
    x, y, z = (float(a) for a in v)
    return _cls(TWIST)(linear=vec(x=x, y=y, z=0.0), angular=vec(x=0.0, y=0.0, z=z))


def clock_msg(t_ns: int):
    """rosgraph_msgs/Clock at ``t_ns``."""
    return _cls(CLOCK)(clock=stamp(t_ns))


def twist_values(msg) -> tuple[float, float, float]:
    """(linear.x, linear.y, angular.z) of a deserialized Twist."""
    return float(msg.linear.x), float(msg.linear.y), float(msg.angular.z)


def serialize(msg, msgtype: str) -> bytes:
    """CDR bytes of a rosbags message."""
    return bytes(typestore().serialize_cdr(msg, msgtype))


def deserialize(data, msgtype: str):
    """A rosbags message from CDR bytes."""
    return typestore().deserialize_cdr(data, msgtype)


def rosbags_qos(role: str) -> list:
    """The offered QoS metadata of a connection in rosbags' form, from `ros.qos.QOS` [role]."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    spec = QOS[role]
    infinite = QosTime(*_INFINITE)
    reliability = QosReliability.RELIABLE if spec.reliable else QosReliability.BEST_EFFORT
    durability = (QosDurability.TRANSIENT_LOCAL if spec.transient_local
                  else QosDurability.VOLATILE)
    return [Qos(QosHistory.KEEP_LAST, spec.depth, reliability, durability, infinite, infinite,
                QosLiveliness.AUTOMATIC, infinite, False)]


def qos_role(topic: str, msgtype: str, topics: TopicConfig | None = None) -> str:
    """The `ros.qos.QOS` role of a bag connection, by the node's topic names (default names).

    Bag topics are absolute; the node's relative names are compared as the root namespace
    resolves them.
    """
    topics = (topics or TopicConfig()).absolute()
    if msgtype in IMAGE_TYPES:
        return "camera"
    roles = {(topics.command_topic, STRING): "command", (topics.enable_topic, BOOL): "enable",
             (topics.cmd_vel_topic, TWIST): "cmd_vel", ("/clock", CLOCK): "clock",
             ("/diagnostics", DIAGNOSTICS): "diagnostics"}
    if (topic, msgtype) in roles:
        return roles[(topic, msgtype)]
    if msgtype == TIMING and topic.endswith(topics.timing_topic.lstrip("~")):
        return "timing"
    return "other"


class BagWriter:
    """A rosbag2 being written; one connection per (topic, type), messages at given ns times."""

    def __init__(self, path: str | Path, storage: str = "mcap", version: int = BAG_VERSION,
                 topics: TopicConfig | None = None):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise BagError(f"storage {storage!r} is not one of {STORAGES}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"output bag {str(self.path)!r} already exists; remove it or "
                                  "choose another path")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(self.path, version=version, storage_plugin=plugin)
        self.topics = topics
        self.connections: dict = {}
        self.count = 0
        self.opened = False

    def __enter__(self) -> BagWriter:
        self.open()
        return self

    def open(self) -> None:
        """Create the bag folder and storage file."""
        self.writer.open()
        self.opened = True

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Finish the bag (writes metadata.yaml); idempotent, a no-op if never opened."""
        if self.writer is not None and self.opened:
            self.writer.close()
        self.writer = None

    def _connection(self, topic: str, msgtype: str):
        key = (topic, msgtype)
        if key not in self.connections:
            self.connections[key] = self.writer.add_connection(
                topic, msgtype, typestore=typestore(),
                offered_qos_profiles=rosbags_qos(qos_role(topic, msgtype, self.topics)))
        return self.connections[key]

    def write(self, topic: str, msgtype: str, t_ns: int, msg) -> None:
        """Serialize and write a rosbags message."""
        self.write_raw(topic, msgtype, t_ns, serialize(msg, msgtype))

    def write_raw(self, topic: str, msgtype: str, t_ns: int, data) -> None:
        """Write already serialized CDR bytes."""
        self.writer.write(self._connection(topic, msgtype), int(t_ns), bytes(data))
        self.count += 1


@contextmanager
def reading(path: str | Path):
    """An open AnyReader; a bag that cannot be opened (damaged, not a bag) -> BagError."""
    path = Path(path)
    try:
        reader = open_bag(path)
        reader.open()
    except BagError:
        raise
    except Exception as exc:  # rosbags raises several error types for damaged bags
        raise BagError(_damaged(path, exc)) from exc
    try:
        yield reader
    finally:
        try:
            reader.close()
        except Exception:  # noqa: BLE001 - closing a damaged bag may fail again
            pass


def iter_messages(reader, connections, path: str | Path = "") -> Iterator[tuple]:
    """(connection, t_ns, raw) in time order; a read failure mid-bag -> BagError with a count."""
    count = 0
    messages = reader.messages(connections=connections)
    while True:
        try:
            item = next(messages)
        except StopIteration:
            return
        except Exception as exc:  # only the reader's own failures reach here
            raise BagError(_damaged(Path(path), exc) + f" (after {count} good messages)") from exc
        yield item
        count += 1


def _damaged(path: Path, exc: BaseException) -> str:
    text = str(exc).lower()
    hint = ""
    if "magic" in text:  # an mcap without its footer (recording killed, file cut short)
        hint = (" (an mcap cut short can often be repaired: `mcap recover IN.mcap -o OUT.mcap`, "
                "then `ros2 bag reindex` on its folder)")
    elif "malformed" in text or "not a database" in text:
        hint = (" (a damaged .db3 can sometimes be salvaged: `sqlite3 IN.db3 .recover | sqlite3 "
                "OUT.db3`, then `ros2 bag reindex` on its folder)")
    return (f"cannot read bag {str(path)!r}: damaged, truncated or not a rosbag2 bag: "
            f"{type(exc).__name__}: {exc}{hint}")


def topic_table(reader) -> list[tuple[str, str, int]]:
    """[(topic, msgtype, message count)] of an open reader, sorted by topic."""
    table: dict = {}
    for c in reader.connections:
        key = (c.topic, c.msgtype)
        table[key] = table.get(key, 0) + c.msgcount
    return sorted((t, m, n) for (t, m), n in table.items())
