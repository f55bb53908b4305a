"""``vla_replay from-h5``: the team's HDF5 episodes -> one rosbag2 (images, command, /cmd_vel)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bagio
from .params import ReplayError
from .sample import DEFAULT_START_S


@dataclass
class Episode:
    """One validated HDF5 episode (images are read lazily, frame by frame)."""

    path: Path
    name: str
    frames: int
    instruction: str | None
    events: list


def _h5_text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        flat = [_h5_text(v) for v in value.reshape(-1)]
        return next((v for v in flat if v.strip()), "")
    return str(value)


def read_episode(f, path: Path, instruction: str | None) -> Episode:
    """Validate an open h5py file in the team's format; errors name the file and the key."""
    def bad(key: str, why: str) -> ReplayError:
        return ReplayError(f"{path}: dataset {key!r} {why}")

    for key in ("images", "actions"):
        if key not in f:
            raise bad(key, f"is missing (found: {sorted(f.keys())})")
        if not hasattr(f[key], "shape"):
            raise bad(key, "is a group, not a dataset")
    images, actions = f["images"], f["actions"]
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise bad("images", f"must be uint8 (T, H, W, 3) BGR, got {images.dtype} {images.shape}")
    if actions.ndim != 2 or actions.shape[1] != 3 or actions.dtype.kind != "f":
        raise bad("actions", f"must be float (T, 3) [linear_x, linear_y, angular_z], got "
                             f"{actions.dtype} {actions.shape}")
    frames = images.shape[0]
    if frames == 0:
        raise bad("images", "has no frames")
    if actions.shape[0] != frames:
        raise bad("actions", f"has {actions.shape[0]} rows but 'images' has {frames} frames")
    events: list = []
    if "action_event_types" in f:
        ds = f["action_event_types"]
        if ds.ndim != 1 or ds.shape[0] != frames:
            raise bad("action_event_types", f"must be ({frames},) strings, got {ds.shape}")
        events = [_h5_text(v) for v in ds[()]]
    if instruction is None:
        if "language_instruction" in f:
            instruction = _h5_text(f["language_instruction"][()]) or None
        elif "language_instruction" in f.attrs:
            instruction = _h5_text(f.attrs["language_instruction"]) or None
    name = _h5_text(f.attrs.get("episode_name", path.stem)) or path.stem
    return Episode(path, name, frames, instruction, events)


def convert_h5(paths: list[str | Path], out: str | Path, hold_s: float = 0.4,
               storage: str = "mcap", compress: str = "none", instruction: str | None = None,
               gap_s: float = 2.0, start_s: float = DEFAULT_START_S, log=print) -> dict:
    """Episodes -> one bag: frame i at t0 + i*hold, action i as /cmd_vel then a zero Twist."""
    import h5py

    if hold_s <= 0 or gap_s < 0:
        raise ReplayError(f"--hold-s {hold_s} must be > 0 and --gap-s {gap_s} >= 0")
    if compress not in ("none", "jpeg"):
        raise ReplayError(f"--compress {compress!r} must be none or jpeg")
    files = [Path(p) for p in paths]
    for p in files:
        if not p.is_file():
            raise ReplayError(f"h5 file {str(p)!r} does not exist")
    # Validate every file before writing anything.
    episodes = []
    for p in files:
        try:
            with h5py.File(p, "r") as f:
                episodes.append(read_episode(f, p, instruction))
        except OSError as exc:
            raise ReplayError(f"{p}: cannot open as HDF5: {exc}") from exc
    topic = "/camera/image_raw/compressed" if compress == "jpeg" else "/camera/image_raw"
    hold_ns, t_ns = int(round(hold_s * 1e9)), int(round(start_s * 1e9))
    report = {"episodes": [], "bag": str(out)}
    writer = bagio.BagWriter(out, storage)
    try:
        with writer as w:
            for ep in episodes:
                if not ep.instruction:
                    log(f"warning: {ep.path}: no language_instruction (dataset or attribute) "
                        "and no --instruction; the bag has no command for this episode")
                end = _write_episode(w, ep, t_ns, hold_ns, topic, compress)
                report["episodes"].append({"file": str(ep.path), "name": ep.name,
                                           "frames": ep.frames, "instruction": ep.instruction,
                                           "start_s": t_ns / 1e9, "end_s": end / 1e9,
                                           "events": dict(Counter(ep.events))})
                t_ns = end + int(round(gap_s * 1e9))
            w.writer.set_custom_data("vla_replay.source", json.dumps(
                [e["file"] for e in report["episodes"]]))
    except BaseException:
        shutil.rmtree(writer.path, ignore_errors=True)  # no half-written bag (we created it)
        raise
    return report


def _write_episode(w: bagio.BagWriter, ep: Episode, t0: int, hold_ns: int, topic: str,
                   compress: str) -> int:
    """Command at t0, frame + reference Twist every hold, zero Twist at the end; return end."""
    import h5py

    if ep.instruction:
        w.write("/vla/command", bagio.STRING, t0, bagio.string_msg(ep.instruction))
    with h5py.File(ep.path, "r") as f:
        images, actions = f["images"], np.asarray(f["actions"][()], dtype=np.float64)
        for i in range(ep.frames):
            t = t0 + i * hold_ns
            try:
                bgr = np.asarray(images[i])
            except OSError as exc:
                raise ReplayError(f"{ep.path}: dataset 'images' frame {i} cannot be read "
                                  f"(damaged file?): {exc}") from exc
            if compress == "jpeg":
                data, fmt = bagio.encode_bgr(bgr, "jpeg")
                w.write(topic, bagio.COMPRESSED, t, bagio.compressed_msg(data, fmt, t))
            else:
                w.write(topic, bagio.IMAGE, t, bagio.raw_image_msg(bgr, "bgr8", t))
            w.write("/cmd_vel", bagio.TWIST, t, bagio.twist_msg(actions[i]))
    end = t0 + ep.frames * hold_ns
    w.write("/cmd_vel", bagio.TWIST, end, bagio.twist_msg((0.0, 0.0, 0.0)))
    return end
