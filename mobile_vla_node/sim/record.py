"""Recording expert episodes: one rosbag2 (replay/bagio.py) and one h5 per episode.

The bag holds, in sim time: ``/clock`` every control period, ``/vla/command`` at each episode's
start, ``/camera/image_raw`` (rgb8, frame id ``camera_front``) at the camera rate and the
expert's ``/cmd_vel`` at the same instants (the reference `vla_replay eval` compares against),
then a zero Twist at each episode's end. Episodes follow each other with a 2 s gap.

The h5 files use the team's episode layout as ``vla_replay from-h5`` reads it
(`replay/convert_h5.read_episode`): ``images`` uint8 (T, H, W, 3) **BGR**, ``actions`` float32
(T, 3) ``[linear_x, linear_y, angular_z]``, ``action_event_types`` (T,) strings
(``episode_start`` then ``start_action``), ``language_instruction`` and the ``episode_name``
attribute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..replay import bagio
from .bridge import FRAME_ID
from .rollout import run_expert
from .suites import Suite
from .world import World

GAP_NS = 2_000_000_000
START_NS = 1_000_000_000


def record_expert(suite: Suite, world: World, bag_path: Path | None, h5_dir: Path | None,
                  control_dt: float = 0.05, camera_dt: float = 0.1, episodes=None,
                  log=print) -> list:
    """Run the expert on the suite, writing the bag and/or h5 files; the results."""
    import h5py

    writer = bagio.BagWriter(bag_path) if bag_path is not None else None
    if h5_dir is not None:
        h5_dir.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = START_NS
    try:
        if writer is not None:
            writer.open()
        for ep in episodes or suite.episodes:
            frames, actions, stamps = [], [], []

            def on_frame(t, rgb, label, executed, frames=frames, actions=actions,
                         stamps=stamps):
                frames.append(rgb.copy())
                actions.append(np.asarray(label, dtype=np.float32))
                stamps.append(t)

            r = run_expert(world, suite.name, ep, control_dt, camera_dt, on_frame)
            results.append(r)
            end = t0 + int(round(r.time_s * 1e9))
            if writer is not None:
                writer.write("/vla/command", bagio.STRING, t0, bagio.string_msg(ep.instruction))
                for k in range(int(round(r.time_s / control_dt)) + 1):
                    t = t0 + int(round(k * control_dt * 1e9))
                    writer.write("/clock", bagio.CLOCK, t, bagio.clock_msg(t))
                for rgb, action, ts in zip(frames, actions, stamps, strict=True):
                    t = t0 + int(round(ts * 1e9))
                    writer.write("/camera/image_raw", bagio.IMAGE, t,
                                 bagio.raw_image_msg(rgb, "rgb8", t, FRAME_ID))
                    writer.write("/cmd_vel", bagio.TWIST, t, bagio.twist_msg(action))
                writer.write("/cmd_vel", bagio.TWIST, end, bagio.twist_msg((0.0, 0.0, 0.0)))
            if h5_dir is not None:
                path = h5_dir / f"{suite.name}_{ep.name}.h5"
                with h5py.File(path, "w") as f:
                    f.create_dataset("images", data=np.stack(frames)[:, :, :, ::-1],
                                     compression="gzip", compression_opts=1)
                    f.create_dataset("actions", data=np.stack(actions))
                    events = ["episode_start"] + ["start_action"] * (len(frames) - 1)
                    f.create_dataset("action_event_types", data=np.array(events, dtype="S16"))
                    f.create_dataset("language_instruction", data=ep.instruction)
                    f.attrs["episode_name"] = ep.name
                    f.attrs["source"] = "vla_sim expert"
            log(f"  expert {ep.name:<16} {r.outcome:<10} {len(frames)} frames")
            t0 = end + GAP_NS
    finally:
        if writer is not None:
            writer.close()
    return results
