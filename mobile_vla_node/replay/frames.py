"""Frames from a rosbag2 bag (sqlite3 or mcap, read with ``rosbags``) or from an image folder.

Used for parity checks, int8 calibration and replay. Yields RGB uint8 (H, W, 3) frames decoded with
the node's own `core.preprocess` code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.preprocess import ImageError, decode_message

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class BagError(RuntimeError):
    """A bag that cannot be opened or read (missing, truncated, no image topic)."""


def open_bag(path: str | Path):
    """Open a bag folder or a single .mcap/.db3 file with rosbags' AnyReader (not yet entered)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag {str(path)!r} does not exist")
    return AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))


def image_connections(reader, topic: str | None = None) -> list:
    """The image connections of an open reader (of ``topic`` if given)."""
    conns = [c for c in reader.connections if c.msgtype in IMAGE_TYPES
             and (topic is None or c.topic == topic)]
    if not conns:
        found = sorted({f"{c.topic} [{c.msgtype}]" for c in reader.connections})
        raise BagError(f"no image topic{' ' + topic if topic else ''} in bag; topics: {found}")
    return conns


def iter_frames(path: str | Path, topic: str | None = None, limit: int | None = None
                ) -> Iterator[np.ndarray]:
    """RGB frames from a bag or an image folder, in order; undecodable frames are skipped."""
    path = Path(path)
    if path.is_dir() and not _is_bag_dir(path):
        yield from _folder_frames(path, limit)
        return
    count = 0
    try:
        with open_bag(path) as reader:
            for conn, _, raw in reader.messages(connections=image_connections(reader, topic)):
                try:
                    frame = decode_message(reader.deserialize(raw, conn.msgtype))
                except ImageError:
                    continue
                yield frame
                count += 1
                if limit is not None and count >= limit:
                    return
    except BagError:
        raise
    except Exception as exc:  # rosbags raises several reader errors for damaged bags
        raise BagError(f"cannot read bag {str(path)!r}: {type(exc).__name__}: {exc}") from exc


def _is_bag_dir(path: Path) -> bool:
    return (path / "metadata.yaml").is_file() or any(path.glob("*.mcap")) or any(
        path.glob("*.db3"))


def _folder_frames(folder: Path, limit: int | None) -> Iterator[np.ndarray]:
    import cv2

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BagError(f"folder {str(folder)!r} has no images ({IMAGE_SUFFIXES}) and is no bag")
    for p in files[:limit]:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None:
            yield cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
