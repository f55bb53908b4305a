"""``vla_sim``: the node drives a simulated omni-wheel robot in MuJoCo (docs/SIM.md).

Subcommands:
  run     one policy through the node on a suite (per-episode JSON, table, plot, GIF)
  demo    `make sim-demo`: the sim policy next to random weights and the zero policy on `demo`
  expert  the scripted expert in-process (baseline); --bag/--h5 record its episodes
  sweep   success against added latency, control rate, chunk playback and backend; dropout
          and e-stop scenarios; a plot of success against latency
  bench   sim cost per camera frame; the largest real_time_factor that keeps the frame rate
  suites  list the shipped suites, or --write to regenerate them
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import suites as suites_mod
from .world import BaseLimits, SimError

DEFAULT_OUT = Path("build") / "sim"


def _pair(text: str):
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected START,DURATION seconds") from exc
    return (a, b)


def _floats(text: str) -> list:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from exc


def _common(p: argparse.ArgumentParser, suite: str = "demo") -> None:
    p.add_argument("--suite", default=suite, help="shipped suite (team, demo) or a YAML file")
    p.add_argument("--episodes", type=int, default=0, help="only the first N episodes (0: all)")
    p.add_argument("--width", type=int, default=320, help="camera width (px)")
    p.add_argument("--height", type=int, default=240, help="camera height (px)")
    p.add_argument("--camera-hz", type=float, default=10.0)
    p.add_argument("--control-rate-hz", type=float, default=20.0,
                   help="the node's control_rate_hz")
    p.add_argument("--real-time-factor", type=float, default=1.0,
                   help="1.0 = the robot's timing; lockstep: an upper bound")
    p.add_argument("--no-lockstep", action="store_true",
                   help="free-running: never wait for the node (load shapes the episode)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added camera-to-node latency")
    p.add_argument("--camera-noise", type=float, default=0.0, help="pixel noise std (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-linear", type=float, default=0.5, help="base speed limit x/y, m/s")
    p.add_argument("--max-angular", type=float, default=1.0, help="base yaw rate limit, rad/s")
    p.add_argument("--accel-linear", type=float, default=1.0, help="m/s^2")
    p.add_argument("--accel-angular", type=float, default=2.0, help="rad/s^2")
    p.add_argument("--domain", type=int, default=None,
                   help="ROS_DOMAIN_ID of the node and the sim, loopback only (default: "
                        "$ROS_DOMAIN_ID, else a free one reserved like the tests do)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")


def _config(args, **changes):
    from .runner import SimConfig

    limits = BaseLimits(args.max_linear, args.max_linear, args.max_angular, args.accel_linear,
                        args.accel_angular)
    values = dict(width=args.width, height=args.height, camera_hz=args.camera_hz,
                  control_rate_hz=args.control_rate_hz, real_time_factor=args.real_time_factor,
                  lockstep=not args.no_lockstep, latency_ms=args.latency_ms,
                  camera_noise=args.camera_noise, seed=args.seed, limits=limits,
                  dropout=getattr(args, "dropout", None), estop=getattr(args, "estop", None))
    values.update(changes)
    return SimConfig(**values)


def _suite(args):
    suite = suites_mod.load(args.suite)
    episodes = suite.episodes[:args.episodes] if args.episodes else suite.episodes
    return suite, episodes


def machine_meta(command: list | None = None) -> dict:
    """Machine, command, date and load, for every figure we write."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
            "python": platform.python_version(), "load_avg_1_5_15": load,
            "command": " ".join(command or ["vla_sim", *sys.argv[1:]])}


def cmd_suites(args) -> int:
    """List or regenerate the shipped suites."""
    if args.write:
        for path in suites_mod.write_shipped():
            print(f"wrote {path}")
    for path in sorted(suites_mod.SUITES_DIR.glob("*.yaml")):
        s = suites_mod.load(str(path))
        print(f"{s.name:<6} {len(s.episodes):3d} episodes  {s.description}")
    return 0


def cmd_expert(args) -> int:
    """The scripted expert in-process; optional recording."""
    from .report import episode_table, success_table, write_json
    from .world import World

    suite, episodes = _suite(args)
    args.out.mkdir(parents=True, exist_ok=True)
    world = World(args.width, args.height, _config(args).limits, render=bool(args.bag or args.h5))
    cfg = _config(args)
    try:
        if args.bag or args.h5:
            from .record import record_expert

            results = record_expert(suite, world, args.bag, args.h5, cfg.control_dt,
                                    1.0 / cfg.camera_hz, episodes)
        else:
            from .rollout import run_expert

            results = [run_expert(world, suite.name, ep, cfg.control_dt, 1.0 / cfg.camera_hz)
                       for ep in episodes]
    finally:
        world.close()
    print(episode_table(results))
    print()
    print(success_table({"expert": results}))
    out = args.out / f"expert_{suite.name}.json"
    write_json(out, results, machine_meta() | {"suite": suite.name, "policy": "expert"})
    print(f"\nper-episode JSON: {out}")
    rate = sum(r.success for r in results) / len(results)
    return 0 if rate >= args.min_success else 1


def _run_policies(args, names: list, suite, episodes, cfg, gif: bool = False,
                  baseline_episodes: int = 0) -> dict:
    from .runner import policy, run_suite

    by_policy = {}
    workdir = args.out / "work"
    frames: list = []
    for name in names:
        pol = policy(name, args.backend, workdir)
        if name in ("random", "zero") and baseline_episodes:
            episodes = _spread(episodes, baseline_episodes)
        print(f"--- {pol.label}: {len(episodes)} episodes of {suite.name} "
              f"({'lockstep' if cfg.lockstep else 'free-running'}, rtf <= "
              f"{cfg.real_time_factor:g})", flush=True)
        keep = frames if gif and not frames else None
        run_cfg = cfg if keep is None else _replace(cfg, frames_out=int(8 * cfg.camera_hz))
        by_policy[pol.label] = run_suite(suite, pol, run_cfg, args.domain, workdir / name,
                                         episodes, frames=keep,
                                         node_extra=_node_params(getattr(args, "param", [])))
    by_policy["_frames"] = frames
    return by_policy


def _node_params(items: list) -> dict:
    """``NAME:=VALUE`` node parameters (YAML values: numbers, booleans, strings)."""
    import yaml

    out = {}
    for item in items or []:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise SimError(f"--param {item!r}: expected NAME:=VALUE")
        out[name] = yaml.safe_load(value) if value else ""
    return out


def _spread(episodes: list, n: int) -> list:
    """``n`` episodes taking each instruction in turn (the suite's order within one)."""
    groups: dict = {}
    for ep in episodes:
        groups.setdefault(ep.instruction, []).append(ep)
    out, k = [], 0
    while len(out) < min(n, len(episodes)):
        for eps in groups.values():
            if k < len(eps) and len(out) < n:
                out.append(eps[k])
        k += 1
    return out


def _replace(cfg, **kw):
    from dataclasses import replace

    return replace(cfg, **kw)


def _write_run(args, suite, by_policy: dict, cfg, tag: str) -> None:
    from dataclasses import asdict

    from .report import (
        episode_table,
        plot_trajectories,
        success_table,
        write_gif,
        write_json,
    )

    frames = by_policy.pop("_frames", [])
    args.out.mkdir(parents=True, exist_ok=True)
    every = [r for rs in by_policy.values() for r in rs]
    print()
    print(episode_table(every))
    print()
    print(success_table(by_policy))
    meta = machine_meta() | {"suite": suite.name, "config": asdict(cfg),
                             "success": {p: sum(r.success for r in rs) / len(rs)
                                         for p, rs in by_policy.items()}}
    write_json(args.out / f"{tag}.json", every, meta)
    plot_trajectories(args.out / f"{tag}_topdown.png", suite, by_policy)
    print(f"\nper-episode JSON: {args.out / f'{tag}.json'}\ntop-down plot: "
          f"{args.out / f'{tag}_topdown.png'}")
    if frames:
        write_gif(args.out / f"{tag}_onboard.gif", frames, cfg.camera_hz)
        print(f"onboard camera: {args.out / f'{tag}_onboard.gif'} ({len(frames)} frames)")


def cmd_run(args) -> int:
    """One policy through the node."""
    suite, episodes = _suite(args)
    cfg = _config(args)
    runs = []
    for i in range(args.repeat):
        by_policy = _run_policies(args, [args.policy], suite, episodes, cfg, gif=args.gif)
        runs.append(next(iter(v for k, v in by_policy.items() if k != "_frames")))
        _write_run(args, suite, by_policy, cfg, f"run_{suite.name}" + (f"_{i}" if i else ""))
    results = runs[0]
    if args.repeat > 1:
        same = _compare_runs(runs)
        (args.out / f"repeat_{suite.name}.json").write_text(json.dumps(
            machine_meta() | {"repeat": args.repeat, "same_outcomes": same["outcomes"],
                              "max_final_pose_diff": same["pose"],
                              "per_run": [[r.outcome for r in rs] for rs in runs]}, indent=1))
        print(f"\n{args.repeat} runs: same outcome per episode: {same['outcomes']}; largest "
              f"final-pose difference {same['pose']:.2e} (m or rad)")
        if not same["outcomes"]:
            return 1
    rate = sum(r.success for r in results) / len(results)
    return 0 if rate >= args.min_success else 1


def _compare_runs(runs: list) -> dict:
    """Whether every run had the same outcome per episode; the largest final-pose difference."""
    first = runs[0]
    outcomes = all([r.outcome for r in rs] == [r.outcome for r in first] for rs in runs)
    pose = max((abs(a - b) for rs in runs[1:] for r1, r2 in zip(first, rs, strict=True)
                for a, b in zip(r1.final_pose, r2.final_pose, strict=True)), default=0.0)
    return {"outcomes": outcomes, "pose": float(pose)}


def cmd_demo(args) -> int:
    """`make sim-demo`: sim policy, random weights, zero policy."""
    suite, episodes = _suite(args)
    cfg = _config(args)
    t0 = time.monotonic()
    by_policy = _run_policies(args, ["sim", "random", "zero"], suite, episodes, cfg, gif=True,
                              baseline_episodes=args.baseline_episodes)
    _write_run(args, suite, by_policy, cfg, "sim_demo")
    print(f"\nsim-demo took {time.monotonic() - t0:.0f} s (wall)")
    sim = by_policy["sim"]
    return 0 if sum(r.success for r in sim) / len(sim) >= args.min_success else 1


def cmd_sweep(args) -> int:
    """Success against latency, control rate, chunk playback, backend; dropout, e-stop."""
    from dataclasses import asdict

    from .report import plot_sweep
    from .runner import policy, run_suite

    suite, episodes = _suite(args)
    base = _config(args)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    workdir = args.out / "work"

    def one(series: str, cfg, pol_name: str = args.policy, backend: str = "torch",
            node_extra: dict | None = None, **fields) -> None:
        pol = policy(pol_name, backend, workdir)
        print(f"--- {series} {fields}", flush=True)
        results = run_suite(suite, pol, cfg, args.domain, workdir / "runs", episodes,
                            node_extra=node_extra)
        rate = sum(r.success for r in results) / len(results)
        row = {"series": series, **fields, "success_rate": round(rate, 4),
               "episodes": len(results), "outcomes": [r.outcome for r in results],
               "time_to_goal_s": [r.time_to_goal_s for r in results],
               "final_distance_m": [round(r.final_distance_m, 3) for r in results],
               "events": [r.events for r in results],
               "stops_by_cause": [r.node.get("stops_by_cause") for r in results]}
        rows.append(row)
        print(f"    success {100 * rate:.1f} %  {row['outcomes']}", flush=True)
        (args.out / "sweep.json").write_text(json.dumps(
            {"meta": machine_meta() | {"suite": suite.name, "base": asdict(base)},
             "rows": rows}, indent=1, default=str) + "\n")

    for what in args.what:
        if what == "latency":
            for ms in args.latencies:
                one("latency", _replace(base, latency_ms=ms), latency_ms=ms)
        elif what == "rate":
            for hz in args.rates:
                one("control_rate", _replace(base, control_rate_hz=hz), control_rate_hz=hz)
        elif what == "chunk":
            for mode, blend in (("chunk", 0), ("chunk", 2), ("server", 0)):
                one("chunk_playback", base, node_extra={"action_mode": mode,
                                                        "chunk_blend_steps": blend},
                    action_mode=mode, chunk_blend_steps=blend)
        elif what == "backend":
            for backend in ("torch", "onnx"):
                one("backend", base, backend=backend, backend_name=backend)
        elif what == "dropout":
            one("dropout", _replace(base, dropout=(args.event_at, args.event_for)),
                dropout=f"{args.event_at:g}+{args.event_for:g} s")
        elif what == "estop":
            one("estop", _replace(base, estop=(args.event_at, args.event_for)),
                estop=f"{args.event_at:g}+{args.event_for:g} s")
        else:
            raise SimError(f"unknown sweep {what!r}")
    lat = [r for r in rows if r["series"] == "latency"]
    if lat:
        plot_sweep(args.out / "sweep_latency.png", lat, "latency_ms",
                   f"vla_sim {suite.name}: success vs added camera-to-node latency "
                   f"({args.policy} policy)")
        print(f"plot: {args.out / 'sweep_latency.png'}")
    print(f"sweep JSON: {args.out / 'sweep.json'}")
    return 0


def cmd_bench(args) -> int:
    """Sim cost per camera frame (render + physics), then free-running runs at several rtf."""
    import numpy as np

    from .rollout import run_expert
    from .runner import policy, run_suite
    from .world import World

    suite, episodes = _suite(args)
    cfg = _config(args)
    out: dict = {"meta": machine_meta(), "render": {}, "rtf": []}
    steps = int(round(1.0 / cfg.camera_hz / 0.005))
    for w, h in ((224, 224), (320, 240), (640, 480)):
        world = World(w, h)
        world.reset(episodes[0])
        world.set_command([0.3, 0.0, 0.2])
        world.render()
        times = []
        for _ in range(args.frames):
            t = time.perf_counter()
            world.step(1.0 / cfg.camera_hz)
            world.render()
            times.append((time.perf_counter() - t) * 1e3)
        world.close()
        out["render"][f"{w}x{h}"] = {"p50_ms": round(float(np.median(times)), 2),
                                     "p95_ms": round(float(np.percentile(times, 95)), 2),
                                     "physics_steps": steps}
        print(f"sim cost per frame {w}x{h} ({steps} physics steps + render): median "
              f"{np.median(times):.1f} ms, p95 {np.percentile(times, 95):.1f} ms", flush=True)
    world = World(render=False)
    t = time.perf_counter()
    r = run_expert(world, suite.name, episodes[0])
    out["expert_no_render_rtf"] = round(r.time_s / (time.perf_counter() - t), 1)
    for rtf in args.rtfs:
        c = _replace(cfg, real_time_factor=rtf, lockstep=False)
        results = run_suite(suite, policy(args.policy, "torch", args.out / "work"), c,
                            args.domain, args.out / "work" / "bench",
                            episodes[:args.bench_episodes])
        achieved = [r.time_s / max(r.wall_s, 1e-9) for r in results]
        rates = [r.node.get("control_rate_hz", 0.0) for r in results]
        steps_per_s = [r.node.get("steps", 0) / max(r.time_s, 1e-9) for r in results]
        received = [r.node.get("frames_received", 0) / max(r.time_s, 1e-9) for r in results]
        row = {"real_time_factor": rtf, "achieved_rtf": round(float(np.mean(achieved)), 3),
               "node_control_rate_hz_sim": round(float(np.mean(rates)), 2),
               "node_steps_per_sim_s": round(float(np.mean(steps_per_s)), 2),
               "frames_received_per_sim_s": round(float(np.mean(received)), 2),
               "frames_sent": [r.node.get("frames_sent") for r in results],
               "frames_dropped_by_node": [r.node.get("frames_dropped") for r in results],
               "camera_hz": cfg.camera_hz, "success": [r.success for r in results]}
        out["rtf"].append(row)
        print(f"rtf {rtf:g}: achieved {row['achieved_rtf']:.2f}, node control "
              f"{row['node_control_rate_hz_sim']:.1f} Hz, {row['frames_received_per_sim_s']:.1f} "
              f"frames received and {row['node_steps_per_sim_s']:.1f} steps used per sim second "
              f"(camera {cfg.camera_hz:g} fps)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"bench JSON: {args.out / 'bench.json'}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla_sim", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("suites", help="list or regenerate the shipped suites")
    s.add_argument("--write", action="store_true")
    s.set_defaults(fn=cmd_suites)

    s = sub.add_parser("expert", help="the scripted expert, in-process")
    _common(s, "team")
    s.add_argument("--bag", type=Path, help="record the episodes as one rosbag2 here")
    s.add_argument("--h5", type=Path, help="record one h5 per episode (team layout) here")
    s.add_argument("--min-success", type=float, default=0.0)
    s.set_defaults(fn=cmd_expert)

    for name, fn, helptext in (("run", cmd_run, "one policy through the node"),
                               ("demo", cmd_demo, "make sim-demo")):
        s = sub.add_parser(name, help=helptext)
        _common(s)
        s.add_argument("--backend", default="torch", choices=("torch", "onnx"))
        if name == "run":
            s.add_argument("--policy", default="sim", help="sim, demo, random, zero or a path")
            s.add_argument("--gif", action="store_true", help="write an onboard-camera GIF")
            s.add_argument("--repeat", type=int, default=1,
                           help="run N times (a fresh node each) and compare the outcomes")
        else:
            s.add_argument("--baseline-episodes", type=int, default=6,
                           help="episodes of the random and zero baselines, spread over the "
                                "instructions (0: all; they mostly run to the time limit)")
        s.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                       help="an extra node parameter (repeatable), e.g. model_config:=/m/x.json")
        s.add_argument("--dropout", type=_pair, help="START,DURATION s without camera frames")
        s.add_argument("--estop", type=_pair, help="START,DURATION s of e-stop")
        s.add_argument("--min-success", type=float, default=0.0,
                       help="exit 1 below this success rate")
        s.set_defaults(fn=fn)

    s = sub.add_parser("sweep", help="success against latency, rate, chunk mode, backend")
    _common(s)
    s.add_argument("--policy", default="sim")
    s.add_argument("--what", type=lambda t: t.split(","),
                   default=["latency", "rate", "chunk", "backend", "dropout", "estop"])
    s.add_argument("--latencies", type=_floats, default=[0, 25, 50, 100, 200, 400])
    s.add_argument("--rates", type=_floats, default=[10, 20, 40])
    s.add_argument("--event-at", type=float, default=2.0, help="dropout/e-stop start (s)")
    s.add_argument("--event-for", type=float, default=2.0, help="dropout/e-stop length (s)")
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("bench", help="sim cost per frame and real_time_factor capacity")
    _common(s)
    s.add_argument("--policy", default="sim")
    s.add_argument("--frames", type=int, default=50)
    s.add_argument("--rtfs", type=_floats, default=[0.5, 1.0, 2.0])
    s.add_argument("--bench-episodes", type=int, default=2)
    s.set_defaults(fn=cmd_bench)
    return p


def main(argv=None) -> int:
    """Entry point of ``vla_sim``."""
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except (SimError, suites_mod.SuiteError) as exc:
        print(f"vla_sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
