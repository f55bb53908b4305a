"""``vla_replay make-sample``: a deterministic synthetic bag from the demo world."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from . import bagio

DEFAULT_START_S = 1_700_000_000  # bag time of generated bags (fixed: same input, same bag)


def make_sample(out: str | Path, storage: str = "mcap", duration: float = 12.0,
                fps: float = 10.0, encoding: str = "rgb8", width: int = 320, height: int = 240,
                seed: int = 0, start_s: float = DEFAULT_START_S) -> dict:
    """A synthetic bag: instructions on /vla/command, frames, and the target Twist per frame."""
    from ..demo import synthetic

    timeline = synthetic.demo_timeline(duration, fps, seed)
    topic = ("/camera/image_raw/compressed" if encoding in bagio.COMPRESSED_FORMATS
             else "/camera/image_raw")
    base = int(round(start_s * 1e9))
    last = None
    counts: Counter = Counter()
    with bagio.BagWriter(out, storage) as w:
        for t, scene in timeline:
            t_ns = base + int(round(t * 1e9))
            if scene.instruction != last:
                w.write("/vla/command", bagio.STRING, t_ns, bagio.string_msg(scene.instruction))
                last = scene.instruction
                counts["/vla/command"] += 1
            msgtype, msg = bagio.frame_message(synthetic.render(scene, width, height),
                                               encoding, t_ns)
            w.write(topic, msgtype, t_ns, msg)
            w.write("/cmd_vel", bagio.TWIST, t_ns,
                    bagio.twist_msg(synthetic.target_velocity(scene)))
            counts[topic] += 1
            counts["/cmd_vel"] += 1
        w.writer.set_custom_data("vla_replay.source", f"make-sample seed={seed} "
                                 f"duration={duration} fps={fps} {width}x{height} {encoding}")
    return dict(counts)

