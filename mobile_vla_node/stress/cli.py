"""`vla_stress`: the node's reliability benchmark under load, signals and time jumps.

Starts the node as its own process (default parameters, the tiny demo policy on torch), feeds it
640x480 frames at 20 fps and the command "move forward" over loopback DDS, and runs named
scenarios. Each prints a table and writes ``<out>/<scenario>.json``; the issue-10 targets are
checked (PASS/FAIL) and the exit code is 1 if any fails (``--no-fail``: report only).

  camera-1080p     1920x1080 rgb8 at 20 fps instead of 640x480
  command-100hz    the unchanged command republished at 100 Hz
  clock-100hz      use_sim_time, /clock at 100 Hz tracking wall time, frames stamped in sim time
  malformed-flood  malformed frames and commands mixed with good ones; RSS before/after
  signals          --runs starts, each SIGINT/SIGTERM (single, double, triple) while driving
  clock-jump       use_sim_time; the camera stops and /clock jumps back/forward 10 s (or not)
  soak             --minutes of normal driving: rate per --window-s, gaps, late ticks, load
                   average, RSS growth after --warmup-min
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from . import report
from .scenarios import LOAD_SCENARIOS, SCENARIOS, StartupError

DEFAULT_DOMAIN = 54


def _param(text: str):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    for cast in (int, float):
        try:
            return name, cast(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    return name, value


def parse_args(argv=None) -> argparse.Namespace:
    """Command line; ``all`` means every scenario but soak."""
    p = argparse.ArgumentParser(prog="vla_stress", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("scenarios", nargs="+", choices=(*SCENARIOS, "all"), metavar="SCENARIO",
                   help=f"one or more of {', '.join(SCENARIOS)}, or all (all but soak)")
    p.add_argument("--cpu-hogs", type=int, default=0,
                   help="busy processes (pure Python spin loops) for the whole scenario")
    p.add_argument("--duration", type=float, default=30.0,
                   help="seconds of load per load scenario (flood included)")
    p.add_argument("--tail", type=float, default=5.0,
                   help="seconds measured after the load stops (recovery; RSS after the flood)")
    p.add_argument("--minutes", type=float, default=10.0, help="soak length")
    p.add_argument("--window-s", type=float, default=60.0,
                   help="soak: rate, gaps and late ticks per window of this many seconds")
    p.add_argument("--warmup-min", type=float, default=5.0,
                   help="soak: RSS growth is judged after this many minutes")
    p.add_argument("--runs", type=int, default=100, help="signals: node starts, one signal "
                   "pattern each (SIGINT, SIGTERM, doubles 5-60 ms apart, triple), in turn")
    p.add_argument("--max-signal-delay", type=float, default=1.5,
                   help="signals: the signal comes uniformly 0..this many s after driving starts")
    p.add_argument("--exit-timeout", type=float, default=20.0,
                   help="signals: SIGKILL a node that has not exited this long after a signal")
    p.add_argument("--repeats", type=int, default=1, help="clock-jump: runs per variant")
    p.add_argument("--jump-drive-s", type=float, default=3.0,
                   help="clock-jump: seconds of driving before the camera stops")
    p.add_argument("--fps", type=float, default=20.0, help="camera rate")
    p.add_argument("--backend", default="torch", help="node backend (default torch, tiny demo "
                   "policy); null for a fast smoke run")
    p.add_argument("--param", dest="params", action="append", type=_param, default=[],
                   metavar="NAME=VALUE", help="extra node parameter (repeatable)")
    p.add_argument("--domain", type=int, default=DEFAULT_DOMAIN, help="ROS_DOMAIN_ID")
    p.add_argument("--out", default="stress_out", help="JSON output folder")
    p.add_argument("--seed", type=int, default=0, help="signals: random delays and gaps")
    p.add_argument("--startup-timeout", type=float, default=240.0)
    p.add_argument("--no-fail", action="store_true", help="exit 0 even if a target fails")
    args = p.parse_args(argv)
    args.params = dict(args.params)
    if args.window_s <= 0:
        p.error(f"--window-s must be > 0, got {args.window_s:g}")
    if "soak" in args.scenarios and not 0 <= args.warmup_min < args.minutes:
        p.error(f"soak: --warmup-min ({args.warmup_min:g}) must be >= 0 and shorter than "
                f"--minutes ({args.minutes:g})")
    if "all" in args.scenarios:
        args.scenarios = [s for s in SCENARIOS if s != "soak"]
    return args


def run_one(args, name: str) -> dict:
    """Run one scenario; its result dict (not yet evaluated)."""
    from . import scenarios

    if name in LOAD_SCENARIOS:
        return scenarios.run_load(args, name)
    if name == "signals":
        return scenarios.run_signals(args)
    return scenarios.run_clock_jump(args)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Run the scenarios; 0 if every target passed (or --no-fail), 1 if one failed, 2 on error."""
    args = parse_args(argv)
    # Ctrl-C and SIGTERM stop the run through the scenarios' clean-up (hogs, node, publishers),
    # also when started in the background, where a non-interactive shell ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    out = Path(args.out)
    summary = {}
    failed = errored = False
    for name in args.scenarios:
        print(f"--- {name}: starting (ROS_DOMAIN_ID={args.domain}, cpu hogs {args.cpu_hogs}, "
              f"backend {args.backend})", flush=True)
        t0 = time.monotonic()
        try:
            result = run_one(args, name)
        except StartupError as exc:
            print(f"--- {name}: could not run: {exc}", file=sys.stderr, flush=True)
            summary[name] = {"error": str(exc)[:2000]}
            errored = True
            continue
        path = report.finish(result, out)
        print(report.render(result))
        print(f"--- {name}: {time.monotonic() - t0:.0f} s, wrote {path}", flush=True)
        summary[name] = {"pass": result["pass"], "targets": result["targets"],
                         "notes": result["notes"]}
        failed |= not result["pass"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print("=== targets: " + ", ".join(
        f"{k} {'error' if 'error' in v else 'PASS' if v['pass'] else 'FAIL'}"
        for k, v in summary.items()))
    if errored:
        return 2
    return 0 if args.no_fail or not failed else 1


if __name__ == "__main__":
    sys.exit(main())
