"""One-command GPU check: ``make gpu-check`` (``PYTHONPATH=. python3 scripts/gpu_check.py``).

Runs from a plain checkout with the machine's own python3 (torch with CUDA, transformers,
onnx, numpy, pytest; no venv, nothing downloaded, no ROS, no TensorRT) and writes everything
under ``--out`` (default ``$OUT``, else ``./gpu_check_out``) as four files:

* ``gpu_check.md``: environment, the GPU tests' figures, the benchmark table (eager vs CUDA
  graphs, bf16 and fp16, model and pipeline modes, each p99 beside its physical lower bound and
  the issue's targets), and every skipped part with its reason (also printed at the end);
* ``gpu_check.json``: all of it as JSON (the vla_bench reports embedded);
* ``gpu_check.log``: every command's full output;
* ``gpu_check_all.tar.gz``: the raw files (bench JSONs, pytest junit XML, test report).

Parts, in priority order, each with a time limit; a part that no longer fits the overall budget
(``--budget-s``, default 450 s) is skipped and says so:

1. environment: nvidia-smi, python/torch/CUDA/cuDNN/transformers/onnx/onnxruntime versions and
   providers, git commit (``GIT_COMMIT`` env var where the checkout has no .git), and which ROS /
   TensorRT parts are skipped and why;
2. ``pytest -m gpu test``: the whole suite collected, the gpu tests run (test/test_gpu.py);
3. ``vla_bench`` on the full-size preset (mobile-vla-kosmos2, RANDOM weights built from its config:
   timing does not depend on the values), torch on cuda: model mode bf16 eager / graphs, pipeline
   mode bf16 eager / graphs, then the same in fp16, then pipeline bf16 with the resize on the CPU
   (device_preprocess=false) for comparison; ``--reference none`` (parity is step 2's job);
4. ``scripts/preprocess_parity.py --device cuda``: the in-graph resize on the GPU vs PIL (every
   filter, 640x480 and 1280x720, TF32 off and on; bit for bit expected), the effect on the demo
   policy's actions, and its cost (p50/p99, upload separately); its tables from the
   ``| resolution`` header on go into the summary, its JSON into gpu_check.json.

Without a CUDA GPU it refuses in one line and exits 3. ``--cpu-dry-run`` exercises the script
itself on a CPU (tiny preset, a few steps; every figure is then a CPU figure, and says so).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXIT_NO_GPU = 3
PRESET = "mobile-vla-kosmos2"
SPECS = "h200,h100-sxm,orin-nx-16gb"
TARGET_GRAPH_P99_MS = 3.0  # issue 14: bf16 step p99 with CUDA graphs on the H200
PIPELINE_EXTRA_MS = 1.0  # pipeline p99 <= step p99 + 1 ms
PARITY_LIMIT_S = 90
PARITY_TABLE = "| resolution"  # where preprocess_parity.py's --device tables start
PYTEST_LIMIT_S = 240
BENCH_LIMIT_S = 150
# (name, mode, precision, backend params); model: 200 timed steps, pipeline: 100 per resolution.
BENCH_RUNS = (
    ("model_bf16_eager", "model", "bf16", {}),
    ("model_bf16_graphs", "model", "bf16", {"cuda_graph": "true"}),
    ("pipeline_bf16_eager", "pipeline", "bf16", {}),
    ("pipeline_bf16_graphs", "pipeline", "bf16", {"cuda_graph": "true"}),
    ("model_fp16_eager", "model", "fp16", {}),
    ("model_fp16_graphs", "model", "fp16", {"cuda_graph": "true"}),
    ("pipeline_fp16_eager", "pipeline", "fp16", {}),
    ("pipeline_fp16_graphs", "pipeline", "fp16", {"cuda_graph": "true"}),
    ("pipeline_bf16_graphs_cpu_resize", "pipeline", "bf16",
     {"cuda_graph": "true", "device_preprocess": "false"}),
)
ITERS = {"model": (200, 20), "pipeline": (100, 10)}


def refuse_without_gpu() -> str | None:
    """One line saying why this machine cannot run the check (None: it can)."""
    try:
        import torch
    except ImportError as exc:
        return f"gpu_check: refused: torch is not importable ({exc}); run it where torch+CUDA is"
    if not torch.cuda.is_available():
        return (f"gpu_check: refused: no CUDA GPU visible to torch {torch.__version__} "
                "(torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU")
    return None


class Check:
    """Collects results, logs and skips; writes the four output files."""

    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.log = open(self.work / "gpu_check.log", "w")  # noqa: SIM115 - closed in finish()
        self.result: dict = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                             "budget_s": budget_s, "skipped": [], "steps": {}}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def skip(self, part: str, reason: str) -> None:
        self.result["skipped"].append({"part": part, "reason": reason})
        self.note(f"SKIPPED {part}: {reason}")

    def note(self, text: str) -> None:
        print(f"[gpu_check {time.monotonic() - self.t0:6.1f}s] {text}", flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, name: str, argv: list[str], limit_s: float, env: dict | None = None) -> dict:
        """Run a command with a time limit; output to the log.

        Returns rc, wall time and the output's tail (what the JSON keeps), and, only in the
        returned dict, the whole stdout under ``stdout``.
        """
        limit_s = max(10.0, min(limit_s, self.left()))
        self.note(f"$ {' '.join(argv)}  (limit {limit_s:.0f} s)")
        t0 = time.monotonic()
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        try:
            proc = subprocess.run(argv, cwd=REPO, env=full_env, capture_output=True, text=True,
                                  timeout=limit_s)
            rc, stdout, out = proc.returncode, proc.stdout, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc = "timeout"
            stdout = ((exc.stdout or b"").decode(errors="replace")
                      if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
            out = stdout + f"\n[killed after {limit_s:.0f} s]"
        wall = time.monotonic() - t0
        self.log.write(f"--- {name}: rc {rc}, {wall:.1f} s ---\n{out}\n")
        self.log.flush()
        step = {"argv": argv, "rc": rc, "wall_s": round(wall, 1), "tail": out[-1500:]}
        self.result["steps"][name] = step
        self.note(f"{name}: rc {rc} in {wall:.1f} s")
        return dict(step, stdout=stdout)

    def finish(self, summary: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.md").write_text(summary)
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=2, default=str))
        self.log.close()
        shutil.copy(self.work / "gpu_check.log", self.out / "gpu_check.log")
        with tarfile.open(self.out / "gpu_check_all.tar.gz", "w:gz") as tar:
            tar.add(self.work, arcname="gpu_check")
        shutil.rmtree(self.work, ignore_errors=True)


def _version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - report any import failure
        return f"not importable ({type(exc).__name__}: {str(exc)[:120]})"
    return str(getattr(mod, "__version__", "?"))


def _command(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"n/a ({exc})"


def environment(dry_run: bool = False) -> dict:
    """Versions, GPU, commit, and which ROS/TensorRT parts are skipped and why."""
    import torch

    if dry_run:  # the GPU fields read "none" instead of failing
        gpu = {"gpu": "none (CPU dry run)", "gpu_capability": "n/a", "gpu_memory_gib": "n/a"}
    else:
        gpu = {"gpu": torch.cuda.get_device_name(0),
               "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
               "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30,
                                       1)}

    env = {
        "python": f"{platform.python_version()} at {sys.executable}",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        **gpu,
        "nvidia_smi": _command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                                "clocks.sm,clocks.max.sm,power.limit,pstate",
                                "--format=csv,noheader"]),
        "nvidia_smi_full": _command(["nvidia-smi"]),
    }
    for module in ("transformers", "numpy", "onnx", "onnxruntime", "cv2", "PIL", "pytest",
                   "safetensors", "tokenizers", "yaml"):
        env[module] = _version(module)
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception as exc:  # noqa: BLE001
        env["onnxruntime_providers"] = f"n/a ({exc})"
    commit = os.environ.get("GIT_COMMIT") or _command(["git", "-C", str(REPO), "rev-parse",
                                                       "HEAD"])
    env["git_commit"] = commit or "unknown (no .git here and GIT_COMMIT unset)"
    dirty = _command(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    env["git_dirty"] = (f"{len(dirty.splitlines())} modified files" if dirty
                        else "clean (or no git)")
    skips = {}
    for module, part in (("rclpy", "ROS 2 parts (node/DDS tests, vla_bench --mode node)"),
                         ("tensorrt", "TensorRT backend and engine builds")):
        version = _version(module)
        if version.startswith("not importable"):
            skips[part] = f"{module} {version}"
    providers = env["onnxruntime_providers"]
    if isinstance(providers, list) and "CUDAExecutionProvider" not in providers:
        skips["onnx backend on CUDA"] = (f"onnxruntime has no CUDAExecutionProvider "
                                         f"({providers}); the onnx backend would run on the CPU")
    env["not_run_here"] = skips
    return env


def bench_argv(json_path: Path, mode: str, precision: str, params: dict,
               dry_run: bool = False) -> list[str]:
    """The vla_bench command of one run (``dry_run``: tiny preset on the CPU, a few steps)."""
    iters, warmup = (3, 1) if dry_run else ITERS[mode]
    argv = [sys.executable, "-m", "mobile_vla_node.bench.cli",
            "--preset", "tiny" if dry_run else PRESET, "--backends", "torch", "--mode", mode,
            "--device", "cpu" if dry_run else "cuda", "--precision", precision,
            "--iters", str(iters), "--warmup", str(warmup), "--reference", "none",
            "--device-spec", SPECS, "--control-rate-hz", "50,100", "--json", str(json_path)]
    for name, value in params.items():
        argv += ["--backend-param", f"{name}={value}"]
    return argv


def parity_argv(json_path: Path, dry_run: bool = False) -> list[str]:
    """Part 4's command: the in-graph resize on cuda (``dry_run``: cpu, 640x480, 5 calls)."""
    size = ["--device", "cpu", "--quick", "--iters", "5"] if dry_run else [
        "--device", "cuda", "--iters", "100"]
    return [sys.executable, str(REPO / "scripts" / "preprocess_parity.py"), *size,
            "--json", str(json_path)]


def parity_tables(stdout: str) -> str:
    """preprocess_parity.py's tables and verdict: its stdout from the first ``| resolution``
    line on ("" where there is none)."""
    start = stdout.find(PARITY_TABLE)
    return stdout[start:].strip() if start >= 0 else ""


def bench_row(name: str, report: dict) -> dict:
    """The figures one summary row needs from a vla_bench JSON report."""
    torch_result = report["backends"]["torch"]
    extra = torch_result["info"]["extra"]
    rows = report["limits"]["per_backend"]["torch"]["rows"]
    bounds = {r["spec"]: r["bound_ms"] for r in rows}
    row = {"name": name, "preset": report.get("preset"), "mode": report["mode"],
           "precision": report["precision"],
           "device": torch_result["info"]["device"], "cuda_graph": extra.get("cuda_graph"),
           "preprocess": extra.get("preprocess"), "load_s": torch_result.get("load_s"),
           "first_inference_ms": torch_result.get("first_inference_ms"),
           "bound_ms": bounds, "memory": torch_result.get("memory")}
    if report["mode"] == "model":
        lat = torch_result["model"]["latency_ms"]
        row.update(p50=lat["p50"], p99=lat["p99"], max=lat["max"])
    else:
        for res, r in torch_result["pipeline"].items():
            stages = r["stages_ms"]
            row[res] = {k: {"p50": v["p50"], "p99": v["p99"]} for k, v in stages.items()}
        first = torch_result["pipeline"].get("640x480", {}).get("stages_ms", {})
        if first:
            row.update(p50=first["total"]["p50"], p99=first["total"]["p99"],
                       max=first["total"]["max"])
    return row


def summarize(result: dict) -> str:
    """The Markdown summary (also printed)."""
    env = result.get("environment", {})
    lines = ["# gpu_check", ""]
    if result.get("cpu_dry_run"):
        lines += ["**CPU DRY RUN (--cpu-dry-run): tiny preset on the CPU; no figure below was "
                  "measured on a GPU.**", ""]
    lines += [f"started {result['started_utc']} UTC, wall "
             f"{result.get('wall_s', '?')} s of a {result['budget_s']:.0f} s budget", "",
             "## Environment", "", "```"]
    for key in ("gpu", "nvidia_smi", "gpu_capability", "gpu_memory_gib", "python", "torch",
                "torch_cuda", "cudnn", "cudnn_allow_tf32", "matmul_allow_tf32", "transformers",
                "numpy", "onnx", "onnxruntime", "onnxruntime_providers", "cv2", "PIL", "pytest",
                "cpu_count", "loadavg", "git_commit", "git_dirty"):
        lines.append(f"{key}: {env.get(key)}")
    lines += ["```", "", "Not run on this machine:"]
    lines += [f"- {part}: {why}" for part, why in env.get("not_run_here", {}).items()] or ["- -"]
    tests = result.get("gpu_tests", {})
    lines += ["", "## GPU tests (`pytest -m gpu test`)", "",
              f"outcome: {result.get('pytest_outcome', 'not run')}", ""]
    if tests:
        lines += ["| comparison | actions max abs | actions mean abs | feature max abs | "
                  "tolerance |", "|---|---|---|---|---|"]
        for key, value in tests.items():
            if isinstance(value, dict) and "actions" in value:
                lines.append(f"| {key} | {value['actions']['max_abs']:.3g} | "
                             f"{value['actions']['mean_abs']:.3g} | "
                             f"{value['feature']['max_abs']:.3g} | "
                             f"{value.get('atol_actions', '')} |")
            elif isinstance(value, dict) and "vs_eager" in value:
                v = value["vs_eager"]
                lines.append(f"| {key}: graphs vs eager | {v['actions']['max_abs']:.3g} | "
                             f"{v['actions']['mean_abs']:.3g} | {v['feature']['max_abs']:.3g} "
                             f"| 1e-3 |")
        lines.append("")
        lines.append("```")
        lines.append(json.dumps({k: v for k, v in tests.items()
                                 if k in ("gpu_resize_vs_pil", "full_model",
                                          "runtime_raw_frames_bf16_graphs_vs_cpu_fp32_pil")
                                 or k.endswith("_graphs")}, indent=1, default=str)[:6000])
        lines.append("```")
    rows = result.get("bench", [])
    preset = (rows[0].get("preset") if rows else None) or PRESET
    where = "cpu (DRY RUN)" if result.get("cpu_dry_run") else "cuda"
    lines += ["", f"## vla_bench, {preset} (random weights), torch on {where}", ""]
    if rows:
        lines += ["| run | p50 ms | p99 ms | bound ms (h200) | p99 / bound | target | "
                  "cuda_graph | preprocess |", "|---|---|---|---|---|---|---|---|"]
        step_p99 = {(r["precision"], "graphs" in r["name"]): r.get("p99") for r in rows
                    if r["mode"] == "model"}
        for r in rows:
            bound = r["bound_ms"].get("h200")
            target = ""
            if r["mode"] == "model" and r["precision"] == "bf16" and "graphs" in r["name"]:
                target = (f"p99 <= {TARGET_GRAPH_P99_MS} ms: "
                          f"{'met' if r['p99'] <= TARGET_GRAPH_P99_MS else 'NOT met'}")
            elif r["mode"] == "pipeline":
                ref = step_p99.get((r["precision"], "graphs" in r["name"]))
                if ref is not None:
                    ok = r["p99"] <= ref + PIPELINE_EXTRA_MS
                    target = (f"<= step p99 {ref:.2f} + {PIPELINE_EXTRA_MS:g} ms: "
                              f"{'met' if ok else 'NOT met'}")
            ratio = f"{r['p99'] / bound:.3g}" if bound else "n/a"
            bound_text = f"{bound:.4g}" if bound else "n/a"
            graphs = str(r["cuda_graph"])
            if "eager for" in graphs:  # a capture failed: show why, not the list of graphs
                graphs = "PARTLY EAGER: " + graphs[graphs.find("eager for"):][:100]
            lines.append(f"| {r['name']} | {r['p50']:.3f} | {r['p99']:.3f} | {bound_text} | "
                         f"{ratio} | {target} | {graphs[:120]} | "
                         f"{str(r['preprocess'])[:40]} |")
        lines += ["", "Pipeline rows: 640x480 rgb8 frame in -> actions out (decode, preprocess, "
                  "inference, postprocess); per-stage p50/p99 and 1280x720 are in "
                  "gpu_check.json. bound = max(weight bytes / 4.8 TB/s, FLOPs / 989 TFLOPS)."]
    else:
        lines.append("no benchmark figures")
    if result.get("preprocess_parity"):
        where = "the CPU (DRY RUN)" if result.get("cpu_dry_run") else "the GPU"
        lines += ["", f"## In-graph resize on {where} vs PIL (scripts/preprocess_parity.py "
                  "--device)", "", result["preprocess_parity"]]
    lines += ["", "## Skipped", ""]
    lines += [f"- {s['part']}: {s['reason']}" for s in result["skipped"]] or ["- nothing"]
    lines += ["", "## Steps", "", "| step | rc | wall s |", "|---|---|---|"]
    lines += [f"| {k} | {v['rc']} | {v['wall_s']} |" for k, v in result["steps"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Run the check; exit 0 when every part that ran passed, 1 otherwise, 3 without a GPU."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="overall time budget; parts that no longer fit are skipped")
    p.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    p.add_argument("--skip-bench", action="store_true", help="tests only")
    p.add_argument("--runs", help=f"comma-separated subset of the benchmark runs "
                   f"({', '.join(r[0] for r in BENCH_RUNS)})")
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="test the script on a CPU: tiny preset, a few steps, no GPU figures")
    args = p.parse_args(argv)
    runs = BENCH_RUNS
    if args.runs:
        wanted = [r for r in args.runs.split(",") if r]
        unknown = sorted(set(wanted) - {r[0] for r in BENCH_RUNS})
        if unknown:
            p.error(f"--runs: unknown {unknown}; known: {[r[0] for r in BENCH_RUNS]}")
        runs = tuple(r for r in BENCH_RUNS if r[0] in wanted)
    refusal = None if args.cpu_dry_run else refuse_without_gpu()
    if refusal:
        print(refusal, file=sys.stderr)
        return EXIT_NO_GPU
    check = Check(args.out.resolve(), args.budget_s)
    failed = []
    check.note(f"writing to {check.out}; budget {args.budget_s:.0f} s")
    check.result["cpu_dry_run"] = args.cpu_dry_run
    check.result["environment"] = environment(args.cpu_dry_run)
    for part, why in check.result["environment"]["not_run_here"].items():
        check.skip(part, why)

    if args.skip_tests:
        check.skip("pytest -m gpu", "--skip-tests")
    else:
        report = check.work / "gpu_tests.json"
        step = check.run("pytest_gpu", [
            sys.executable, "-m", "pytest", "-m", "gpu", "test", "-q", "-rs",
            "-p", "no:cacheprovider", "--continue-on-collection-errors",
            f"--junitxml={check.work / 'pytest_gpu.xml'}"], PYTEST_LIMIT_S,
            env={"VLA_GPU_REPORT": str(report)})
        check.result["pytest_outcome"] = (step["tail"].strip().splitlines() or ["?"])[-1]
        if report.is_file():
            check.result["gpu_tests"] = json.loads(report.read_text())
        if step["rc"] != 0:
            failed.append("pytest -m gpu")

    bench_wall = 0.0
    for name, mode, precision, params in runs:
        if args.skip_bench:
            check.skip(f"vla_bench {name}", "--skip-bench")
            continue
        need = max(60.0, bench_wall * 1.2)
        if check.left() < need:
            check.skip(f"vla_bench {name}", f"time budget: {check.left():.0f} s left, a run "
                       f"took {bench_wall:.0f} s")
            continue
        path = check.work / f"bench_{name}.json"
        step = check.run(f"bench_{name}", bench_argv(path, mode, precision, params,
                                                     args.cpu_dry_run), BENCH_LIMIT_S)
        bench_wall = max(bench_wall, step["wall_s"])
        if step["rc"] == 0 and path.is_file():
            bench = json.loads(path.read_text())
            check.result.setdefault("bench_reports", {})[name] = bench
            check.result.setdefault("bench", []).append(bench_row(name, bench))
        else:
            failed.append(f"vla_bench {name}")

    if check.left() >= 45:
        parity_json = check.work / "preprocess_parity.json"
        step = check.run("preprocess_parity", parity_argv(parity_json, args.cpu_dry_run),
                         PARITY_LIMIT_S)
        table = parity_tables(step["stdout"])
        if table:
            check.result["preprocess_parity"] = table
        if parity_json.is_file():
            check.result["preprocess_parity_report"] = json.loads(parity_json.read_text())
        if step["rc"] != 0:
            failed.append("preprocess_parity")
        elif not table:
            failed.append(f"preprocess_parity (no '{PARITY_TABLE}' table in its output)")
    else:
        check.skip("preprocess_parity", f"time budget: {check.left():.0f} s left")

    check.result["failed"] = failed
    check.result["wall_s"] = round(time.monotonic() - check.t0, 1)
    summary = summarize(check.result)
    check.finish(summary)
    print(summary)
    print(f"gpu_check: {'FAILED: ' + ', '.join(failed) if failed else 'all parts that ran passed'}"
          f"; files in {check.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
