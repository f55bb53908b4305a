"""``vla_bench --mode fleet --robots N``: N robots against one Triton server vs N running locally.

Each simulated robot is its own **process** (a node's inference worker without ROS: backend +
feature history, one step per camera frame) so that robots do not share a Python interpreter or
its GIL, as separate robots would not. Two runs with the same N, prompt and frames:

* ``triton``: every robot runs ``backend: triton`` against ONE local ``tritonserver``
  (``make triton-env``) serving the `vla_export triton` repository with dynamic batching; the
  server's statistics before/after give its throughput and the batch sizes it formed;
* ``local``: every robot runs the same graphs itself (``backend: onnx``, one intra-op thread each).

Robots step at ``--rate-hz`` (a camera rate, random phase per robot; 0 = back-to-back, closed
loop). Reported per robot: step latency p50/p99 and achieved rate; per run: total steps/s, and for
Triton the server's requests/s, executions and batch-size histogram. On a machine with fewer
cores than robots both runs share the same cores: the figures are for comparison on that machine,
not a forecast for a GPU server.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

PROMPT = "go to the red box"


def _parse(argv):
    p = argparse.ArgumentParser(prog="vla_bench --mode fleet", description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=("fleet",), required=True)
    p.add_argument("--robots", type=int, default=4, help="simulated robots (processes)")
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per robot")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per robot")
    p.add_argument("--rate-hz", type=float, default=10.0,
                   help="steps per second per robot (camera rate); 0: back-to-back")
    p.add_argument("--max-batch", type=int, default=8, help="Triton max_batch_size")
    p.add_argument("--queue-delay-us", type=int, default=2000,
                   help="Triton dynamic batcher max queue delay")
    p.add_argument("--timeout-ms", type=float, default=5000.0, help="triton_timeout_ms")
    p.add_argument("--runs", default="triton,local", help="which runs, comma-separated")
    p.add_argument("--env", default="", help="Triton server environment (default .venv-triton)")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if args.robots < 1 or args.steps < 1 or args.warmup < 0 or args.rate_hz < 0:
        p.error("--robots and --steps must be >= 1, --warmup and --rate-hz >= 0")
    if not set(args.runs) <= {"triton", "local"} or not args.runs:
        p.error(f"--runs {args.runs}: choose from triton, local")
    return args


def robot(index: int, params: dict, steps: int, warmup: int, rate_hz: float, ready, go,
          results) -> None:
    """One robot: load the backend, warm up, wait for the others, step, report latencies."""
    from ..backends import create_backend
    from ..core.config import BackendConfig

    out = {"robot": index, "latencies_ms": [], "errors": 0, "error": ""}
    backend = None
    try:
        backend = create_backend(BackendConfig(**params))
        backend.load()
        spec = backend.spec
        ids = backend.tokenizer.encode(PROMPT)
        rng = np.random.default_rng(index)
        frames = [rng.integers(0, 256, (spec.image_size, spec.image_size, 3), np.uint8)
                  for _ in range(4)]
        history: deque = deque(maxlen=max(spec.window_size - 1, 0))

        def step(i):
            past = (np.stack(history) if history
                    else np.zeros((0, spec.feature_dim), np.float32))
            feature, _ = backend.infer(frames[i % len(frames)], ids, past)
            history.append(feature)

        for i in range(warmup):
            step(i)
    except Exception as exc:  # report, and still meet the others at the barrier
        out["error"] = f"{type(exc).__name__}: {exc}"
    ready.wait()  # every robot loaded and warmed up
    go.wait()  # the parent has taken its "before" snapshot
    if not out["error"]:
        period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        start = time.perf_counter()
        due = start + (rng.uniform(0, period) if period else 0.0)
        for i in range(steps):
            if period:
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                due += period
            t0 = time.perf_counter()
            try:
                step(i)
                out["latencies_ms"].append((time.perf_counter() - t0) * 1e3)
            except Exception as exc:  # a failed step counts, the robot carries on
                out["errors"] += 1
                out["error"] = f"{type(exc).__name__}: {exc}"
        out["wall_s"] = time.perf_counter() - start
    if backend is not None:
        backend.close()
    results.put(out)


def run_fleet(n: int, params: dict, args, on_start=None) -> dict:
    """Start N robot processes (spawn), return their results and the wall time.

    ``on_start`` is called once every robot is loaded and warmed up, just before timing starts.
    """
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Barrier(n + 1), ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=robot, args=(i, params, args.steps, args.warmup, args.rate_hz,
                                             ready, go, results), daemon=True)
             for i in range(n)]
    for proc in procs:
        proc.start()
    ready.wait(timeout=600)
    extra = on_start() if on_start else None
    go.wait(timeout=60)
    start = time.perf_counter()
    robots = [results.get(timeout=3600) for _ in procs]
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join(timeout=30)
    return {"robots": sorted(robots, key=lambda r: r["robot"]), "wall_s": wall, "start": extra}


def summarize(run: dict) -> dict:
    """Per-robot p50/p99/rate and fleet totals."""
    rows = []
    for r in run["robots"]:
        lat = np.array(r["latencies_ms"])
        rows.append({"robot": r["robot"], "steps": len(lat), "errors": r["errors"],
                     "error": r["error"],
                     "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                     "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
                     "rate_hz": len(lat) / r["wall_s"] if r.get("wall_s") else 0.0})
    all_lat = np.concatenate([np.array(r["latencies_ms"]) for r in run["robots"]] or [[]])
    steps = sum(row["steps"] for row in rows)
    return {"per_robot": rows, "steps": steps, "wall_s": run["wall_s"],
            "steps_per_s": steps / run["wall_s"] if run["wall_s"] else 0.0,
            "p50_ms": float(np.percentile(all_lat, 50)) if len(all_lat) else None,
            "p99_ms": float(np.percentile(all_lat, 99)) if len(all_lat) else None}


def server_stats(url: str, names: tuple) -> dict:
    """Cumulative Triton statistics per model: requests, executions, batch-size histogram."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        out = {}
        for name in names:
            stats = client.get_inference_statistics(name, as_json=True)["model_stats"][-1]
            inference = stats.get("inference_stats", {})
            batches = {int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0))
                       for b in stats.get("batch_stats", [])}
            out[name] = {"requests": int(inference.get("success", {}).get("count", 0)),
                         "request_ns": int(inference.get("success", {}).get("ns", 0)),
                         "queue_ns": int(inference.get("queue", {}).get("ns", 0)),
                         "executions": int(stats.get("execution_count", 0)),
                         "batches": batches}
        return out
    finally:
        client.close()


def stats_delta(after: dict, before: dict, wall_s: float) -> dict:
    """Server figures of one run: requests/s, executions, mean batch, batch histogram."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {"requests": 0, "executions": 0, "batches": {}, "request_ns": 0,
                              "queue_ns": 0})
        requests = a["requests"] - b["requests"]
        executions = a["executions"] - b["executions"]
        hist = {size: count - b["batches"].get(size, 0) for size, count in a["batches"].items()
                if count - b["batches"].get(size, 0) > 0}
        out[name] = {"requests": requests, "requests_per_s": requests / wall_s if wall_s else 0,
                     "executions": executions,
                     "mean_batch": requests / executions if executions else 0.0,
                     "batch_histogram": dict(sorted(hist.items())),
                     "request_ms": (a["request_ns"] - b["request_ns"]) / max(requests, 1) / 1e6,
                     "queue_ms": (a["queue_ns"] - b["queue_ns"]) / max(requests, 1) / 1e6}
    return out


def print_run(name: str, s: dict) -> None:
    """One table per run."""
    print(f"\n{name}: {s['steps']} steps in {s['wall_s']:.1f} s = {s['steps_per_s']:.1f} steps/s; "
          f"all robots p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms")
    print("  robot   steps  errors   p50 ms   p99 ms   rate Hz")
    for r in s["per_robot"]:
        p50 = f"{r['p50_ms']:8.1f}" if r["p50_ms"] is not None else "     n/a"
        p99 = f"{r['p99_ms']:8.1f}" if r["p99_ms"] is not None else "     n/a"
        print(f"  {r['robot']:5d} {r['steps']:7d} {r['errors']:7d} {p50} {p99} "
              f"{r['rate_hz']:9.1f}" + (f"  ({r['error']})" if r["error"] else ""))
    for model, st in s.get("server", {}).items():
        print(f"  server {model}: {st['requests']} requests ({st['requests_per_s']:.1f}/s) in "
              f"{st['executions']} executions, mean batch {st['mean_batch']:.2f}, histogram "
              f"{st['batch_histogram']}; request {st['request_ms']:.2f} ms (queue "
              f"{st['queue_ms']:.2f})")


def main(argv=None) -> int:
    """Run the fleet benchmark; exit 0 when every robot completed every step."""
    from ..export.triton_local_server import DEFAULT_ENV, LocalTriton, ServerError
    from ..export.triton_repo import main as export_triton

    args = _parse(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="vla_fleet_"))
    report = {"tool": "vla_bench", "mode": "fleet", "robots": args.robots, "preset": args.preset,
              "steps": args.steps, "warmup": args.warmup, "rate_hz": args.rate_hz,
              "robot_processes": True, "cpus": os.cpu_count(),
              "loadavg_start": list(os.getloadavg()),
              "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": {}}
    print(f"[fleet] {args.robots} robot processes x {args.steps} steps at "
          f"{args.rate_hz:g} Hz ({'closed loop' if not args.rate_hz else 'camera rate'}); "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
    if "triton" in args.runs:
        repo = work / "repo"
        code = export_triton(["--preset", args.preset, "--output", str(repo), "--instance-kind",
                              "cpu", "--max-batch", str(args.max_batch), "--queue-delay-us",
                              str(args.queue_delay_us)])
        if code:
            return code
        server = LocalTriton(repo, work / "server", Path(args.env) if args.env else DEFAULT_ENV)
        try:
            server.start().wait_ready()
        except ServerError as exc:
            print(f"[fleet] ERROR: {exc}", file=sys.stderr)
            return 2
        try:
            names = ("mobile_vla_encoder", "mobile_vla_step")
            params = {"backend": "triton", "triton_url": server.url,
                      "triton_timeout_ms": args.timeout_ms, "warmup_iters": 0}
            run = run_fleet(args.robots, params, args,
                            on_start=lambda: server_stats(server.url, names))
            summary = summarize(run)
            summary["server"] = stats_delta(server_stats(server.url, names), run["start"],
                                            run["wall_s"])
        finally:
            server.stop()
        report["runs"]["triton"] = summary
        print_run("triton (one server)", summary)
    if "local" in args.runs:
        onnx = work / "policy.onnx"
        export = subprocess.run([sys.executable, "-m", "mobile_vla_node.export.cli", "onnx",
                                 "--preset", args.preset, "--output", str(onnx)],
                                capture_output=True, text=True)
        if export.returncode:
            print(export.stdout + export.stderr, file=sys.stderr)
            return export.returncode
        params = {"backend": "onnx", "model_path": str(onnx), "intra_op_threads": 1,
                  "warmup_iters": 0}
        summary = summarize(run_fleet(args.robots, params, args))
        report["runs"]["local"] = summary
        print_run("local (onnx in every robot, 1 thread each)", summary)
    report["loadavg_end"] = list(os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    failed = sum(r["errors"] + (1 if r["error"] and not r["steps"] else 0)
                 for s in report["runs"].values() for r in s["per_robot"])
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
