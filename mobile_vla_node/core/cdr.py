"""Camera messages read straight from their serialized (CDR) bytes: no copy of the pixels.

The node subscribes to its camera topic with ``raw=True``: rclpy then hands over the serialized
message as one ``bytes`` object instead of converting it into a Python message, which for a
640x480 rgb8 frame costs three copies of 921,600 bytes (CDR -> C struct -> ``bytes`` ->
``array.array``) and ~0.5 ms of the GIL in the executor thread at every frame (measured, issue
19). `parse_image` and `parse_compressed_image` read the few header fields and give ``data`` as a
``memoryview`` into those bytes, so `core.preprocess.decode_view` sees the pixels of the DDS
sample itself.

Layout (OMG XCDR, version 1 plain or version 2 final, which are the same for these fields): a
4-byte encapsulation header (byte 1: 0/1 = big/little endian, 6/7 = the XCDR2 variants), then
the fields, each aligned to its size relative to the end of that header::

    Image            header(stamp(int32 sec, uint32 nanosec), string frame_id), uint32 height,
                     uint32 width, string encoding, uint8 is_bigendian, uint32 step, uint8[] data
    CompressedImage  header, string format, uint8[] data

A string is a uint32 length that counts its terminating NUL, then the bytes. Anything else (an
unknown encapsulation, a length past the end) raises `CdrError`; the caller then falls back to
the ROS deserializer rather than guess.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# encapsulation id (big-endian uint16 in the first two bytes) -> byte order
ENCAPSULATIONS = {0x0000: ">", 0x0001: "<", 0x0006: ">", 0x0007: "<"}
HEADER_BYTES = 4


class CdrError(ValueError):
    """The bytes are not a message of the expected type in a layout this reader knows."""


@dataclass(frozen=True)
class Stamp:
    """builtin_interfaces/Time."""

    sec: int
    nanosec: int


@dataclass(frozen=True)
class Header:
    """std_msgs/Header."""

    stamp: Stamp
    frame_id: str


@dataclass(frozen=True)
class RawImage:
    """sensor_msgs/Image fields; ``data`` is a view of the serialized bytes."""

    header: Header
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview


@dataclass(frozen=True)
class RawCompressedImage:
    """sensor_msgs/CompressedImage fields; ``data`` is a view of the serialized bytes."""

    header: Header
    format: str
    data: memoryview


class _Reader:
    def __init__(self, buf: bytes):
        if len(buf) < HEADER_BYTES:
            raise CdrError(f"{len(buf)} bytes: no CDR encapsulation header")
        kind = (buf[0] << 8) | buf[1]
        if kind not in ENCAPSULATIONS:
            raise CdrError(f"CDR encapsulation 0x{kind:04x} is not plain XCDR1/XCDR2")
        self.buf, self.view = buf, memoryview(buf)
        self.order = ENCAPSULATIONS[kind]
        self.pos = HEADER_BYTES

    def _align(self, size: int) -> None:
        self.pos += -(self.pos - HEADER_BYTES) % size

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise CdrError(f"field of {n} bytes at offset {self.pos} runs past the end "
                           f"({len(self.buf)} bytes)")

    def u32(self) -> int:
        self._align(4)
        self._need(4)
        (value,) = struct.unpack_from(self.order + "I", self.buf, self.pos)
        self.pos += 4
        return value

    def i32(self) -> int:
        self._align(4)
        self._need(4)
        (value,) = struct.unpack_from(self.order + "i", self.buf, self.pos)
        self.pos += 4
        return value

    def u8(self) -> int:
        self._need(1)
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def string(self) -> str:
        n = self.u32()
        self._need(n)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.rstrip(b"\0").decode("utf-8", errors="replace")

    def octets(self) -> memoryview:
        n = self.u32()
        self._need(n)
        out = self.view[self.pos:self.pos + n]
        self.pos += n
        return out

    def header(self) -> Header:
        sec = self.i32()
        return Header(Stamp(sec, self.u32()), self.string())


def parse_image(buf: bytes) -> RawImage:
    """A serialized ``sensor_msgs/msg/Image`` -> `RawImage` (pixels not copied)."""
    r = _Reader(buf)
    header = r.header()
    height, width = r.u32(), r.u32()
    encoding = r.string()
    is_bigendian = r.u8()
    step = r.u32()
    return RawImage(header, height, width, encoding, is_bigendian, step, r.octets())


def parse_compressed_image(buf: bytes) -> RawCompressedImage:
    """A serialized ``sensor_msgs/msg/CompressedImage`` -> `RawCompressedImage`."""
    r = _Reader(buf)
    header = r.header()
    fmt = r.string()
    return RawCompressedImage(header, fmt, r.octets())
