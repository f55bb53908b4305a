"""``vla_replay``: evaluate a policy on a rosbag offline, play a bag to the live node, make bags.

Subcommands:

* ``eval BAG --out DIR``: offline and deterministic. The bag's image, command, enable and
  reference-Twist messages are processed in bag-time order by the node's own core
  (`PolicyRuntime` + `ControlLoop`), with control ticks every ``1 / control_rate_hz`` of bag time.
  Time model ("zero latency"): an image received at bag time ``t`` is inferred at once and its
  chunk is available at ``t``; eval measures the policy, not the compute (measured wall-clock
  latencies are reported in summary.json only). Writes ticks.csv (byte-identical for the same bag,
  model and settings), summary.json and plot.png.
* ``play BAG``: publishes the node's inputs with rclpy at their recorded timing and QoS,
  re-stamping headers to "now" (see `PlayClock`), optionally publishing /clock and recording the
  node's /cmd_vel and /diagnostics into a new bag.
* ``from-h5 EPISODE.h5... --out BAG``: converts the team's HDF5 episodes to a bag.
* ``make-sample --out BAG``: a synthetic bag from `mobile_vla_node.demo.synthetic`.

Errors in the inputs (missing bag, damaged file, bad dataset, unknown parameter) print one line
and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import bagio
from .convert_h5 import convert_h5
from .eval import TIME_MODEL, run_eval
from .frames import BagError
from .metrics import format_summary
from .params import ReplayError, build_config
from .play import run_play
from .sample import make_sample


def build_parser() -> argparse.ArgumentParser:
    """The vla_replay argument parser."""
    parser = argparse.ArgumentParser(prog="vla_replay", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    ev = sub.add_parser("eval", help="evaluate the policy on a bag offline (deterministic)",
                        description=TIME_MODEL)
    ev.add_argument("bag", help="bag folder or .mcap/.db3 file")
    ev.add_argument("--out", required=True, help="output folder (ticks.csv, summary.json, "
                                                 "plot.png)")
    ev.add_argument("--params-file", help="ROS 2 params YAML (/**: ros__parameters:)")
    ev.add_argument("--backend", help="torch, onnx, tensorrt or null")
    ev.add_argument("--model-preset")
    ev.add_argument("--model-path")
    ev.add_argument("--device")
    ev.add_argument("--control-rate-hz", type=float)
    ev.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="any node parameter (YAML value), repeatable")
    ev.add_argument("--image-topic", help="default: the node's image topic, then the compressed "
                                          "one")
    ev.add_argument("--command-topic", help="default: the node's command topic (/vla/command)")
    ev.add_argument("--reference-topic", default="/cmd_vel",
                    help="recorded Twist to compare with (default /cmd_vel)")
    ev.add_argument("--command", help="instruction to use from the start (bag commands are "
                                      "then ignored); needed when the bag has none")
    ev.add_argument("--direction-threshold", type=float, default=0.05,
                    help="|reference| above which direction agreement is counted")
    ev.add_argument("--no-plot", action="store_true")

    pl = sub.add_parser("play", help="publish a bag's node inputs live (rclpy)")
    pl.add_argument("bag")
    pl.add_argument("--rate", type=float, default=1.0)
    pl.add_argument("--loop", action="store_true")
    pl.add_argument("--start-offset", type=float, default=0.0, metavar="S")
    pl.add_argument("--clock", type=float, nargs="?", const=100.0, default=None, metavar="HZ",
                    help="publish /clock (default 100 Hz) for nodes with use_sim_time:=true")
    pl.add_argument("--keep-stamps", action="store_true",
                    help="publish recorded header stamps instead of re-stamping to now")
    pl.add_argument("--topics", nargs="+", help="topics to play (default: the node's inputs "
                                                "present in the bag: images, command, enable)")
    pl.add_argument("--params-file", help="node params YAML (topic names)")
    pl.add_argument("--record", metavar="OUT", help="record the node's outputs into bag OUT")
    pl.add_argument("--record-storage", choices=bagio.STORAGES, default="mcap")
    pl.add_argument("--record-topics", nargs="+", default=["/cmd_vel", "/diagnostics"])
    pl.add_argument("--tail-s", type=float, default=1.0,
                    help="keep recording this long after the last message")
    pl.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                    help="wait up to S s for the node to subscribe before playing")

    h5 = sub.add_parser("from-h5", help="convert HDF5 episodes to a bag")
    h5.add_argument("episodes", nargs="+", help="EPISODE.h5 files, played one after another")
    h5.add_argument("--out", required=True, help="output bag folder")
    h5.add_argument("--hold-s", type=float, default=0.4, help="seconds each key press is held")
    h5.add_argument("--gap-s", type=float, default=2.0, help="pause between episodes")
    h5.add_argument("--storage", choices=bagio.STORAGES, default="mcap")
    h5.add_argument("--compress", choices=("none", "jpeg"), default="none")
    h5.add_argument("--instruction", help="instruction for all episodes (overrides the files')")

    ms = sub.add_parser("make-sample", help="write a synthetic sample bag")
    ms.add_argument("--out", required=True)
    ms.add_argument("--storage", choices=bagio.STORAGES, default="mcap")
    ms.add_argument("--duration", type=float, default=12.0)
    ms.add_argument("--fps", type=float, default=10.0)
    ms.add_argument("--encoding", choices=bagio.RAW_ENCODINGS + bagio.COMPRESSED_FORMATS,
                    default="rgb8")
    ms.add_argument("--width", type=int, default=320)
    ms.add_argument("--height", type=int, default=240)
    ms.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vla_replay``."""
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "eval":
            config = build_config(args.params_file, {
                "backend": args.backend, "model_preset": args.model_preset,
                "model_path": args.model_path, "device": args.device,
                "control_rate_hz": args.control_rate_hz}, args.param)
            summary = run_eval(args.bag, args.out, config, image_topic=args.image_topic,
                               command_topic=args.command_topic,
                               reference_topic=args.reference_topic, command=args.command,
                               direction_threshold=args.direction_threshold,
                               plot=not args.no_plot,
                               log=lambda s: print(s, file=sys.stderr))
            print(format_summary(summary))
        elif args.cmd == "play":
            return run_play(args)
        elif args.cmd == "from-h5":
            report = convert_h5(args.episodes, args.out, args.hold_s, args.storage,
                                args.compress, args.instruction, args.gap_s,
                                log=lambda s: print(s, file=sys.stderr))
            t0 = report["episodes"][0]["start_s"]
            for ep in report["episodes"]:
                events = ", ".join(f"{k} {v}" for k, v in ep["events"].items())
                print(f"{ep['file']}: {ep['frames']} frames at {ep['start_s'] - t0:.1f}-"
                      f"{ep['end_s'] - t0:.1f} s, instruction {ep['instruction']!r}"
                      + (f", events: {events}" if events else ""))
            print(f"wrote {report['bag']} ({args.storage}, {len(report['episodes'])} episodes)")
        else:
            counts = make_sample(args.out, args.storage, args.duration, args.fps, args.encoding,
                                 args.width, args.height, args.seed)
            print(f"wrote {args.out} ({args.storage}): " + ", ".join(
                f"{t} {n}" for t, n in sorted(counts.items())))
    except (ReplayError, BagError) as exc:
        print(f"vla_replay {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vla_replay {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
