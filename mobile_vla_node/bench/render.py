"""`vla_bench` report rendering: Markdown tables (backends side by side) and PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PIPELINE_STAGES = ("decode", "preprocess", "inference", "postprocess")
NODE_STAGES = ("transport", "preprocess", "inference", "scheduling")
# Targets (benchmarked, not tested; issue 19) for 640x480 rgb8 frames: the node's overhead
# (transport + preprocess) p99 at most this many times the bare subscriber's transport p99 in the
# same run; control jitter p99 on the node's own measure and at Twist arrival (a Twist-only
# listener's reception stamps).
OVERHEAD_RATIO_TARGET = 2.0
JITTER_TARGET_MS = 1.0
TWIST_JITTER_TARGET_MS = 2.0


def fmt(value, digits: int = 2) -> str:
    """A table cell: numbers rounded, None/strings passed through."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if value != 0 and (abs(value) < 0.1 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_cdf(path: Path, series: dict, title: str) -> None:
    """Latency CDF, one line per label -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, samples in series.items():
        data = np.sort(np.asarray([s for s in samples if np.isfinite(s)], np.float64))
        if data.size:
            ax.step(data, np.arange(1, data.size + 1) / data.size, where="post", label=label)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of steps <= latency")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_stages(path: Path, breakdown: dict, title: str) -> None:
    """Stacked bars of per-stage mean ms; ``breakdown`` is {label: {stage: mean_ms}} -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(breakdown)
    stages = list(dict.fromkeys(s for v in breakdown.values() for s in v))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4.5))
    bottom = np.zeros(len(labels))
    for stage in stages:
        values = np.array([max(breakdown[lb].get(stage) or 0.0, 0.0) for lb in labels])
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom += values
    ax.set_ylabel("mean ms per step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=8, rotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



def _pp(stats: dict, keys=("p50", "p99")) -> str:
    if not stats or not stats.get("count"):
        return "n/a"
    return " / ".join(fmt(stats.get(k)) for k in keys)


def _model_label(report: dict) -> str:
    return f"{report['preset']} ({report['parameters']:,} params)"


def _device_label(report: dict) -> str:
    kinds = report["devices"]
    if report.get("mixed_devices"):
        return "MIXED-DEVICE (" + ", ".join(f"{n}={k}" for n, k in kinds.items()
                                            if n != "null") + ")"
    return next((k for n, k in kinds.items() if n != "null"), kinds.get("null", "n/a"))


def _memory(mem: dict) -> str:
    for key in ("torch_max_allocated_mb", "nvml_process_used_mb"):
        value = mem.get(key)
        if isinstance(value, (int, float)):
            return f"{value:.0f} ({key.split('_')[0]})"
    reason = str(mem.get("torch_max_allocated_mb", "n/a"))
    if reason.startswith("n/a: backend runs on "):
        return f"n/a ({reason.split(' on ', 1)[1].split(' ')[0]})"
    return reason


def _common_rows(report: dict, names: list[str]) -> list[list]:
    b = report["backends"]
    rows = [["provider / precision"] + [f"{b[n]['info']['provider']} / "
                                        f"{b[n]['info']['precision']}" for n in names],
            ["actual device (BackendInfo)"] + [b[n]["info"]["device"] for n in names]]
    if report["mode"] == "node":
        return rows
    export = report.get("export", {})
    build = {"onnx": export.get("onnx", {}).get("seconds"),
             "tensorrt": export.get("tensorrt", {}).get("seconds")}
    rows += [["load (s)"] + [b[n]["load_s"] for n in names],
             ["export / engine build (s)"] + [build.get(n) for n in names],
             ["first inference, cold (ms)"] + [b[n]["first_inference_ms"] for n in names],
             ["peak host RSS (MB)"] + [b[n]["memory"]["rss_peak_mb"] for n in names],
             ["peak device memory (MB)"] + [_memory(b[n]["memory"]) for n in names]]
    parity = report.get("parity") or {}
    if parity:
        def cell(n: str, out: str) -> str:
            p = parity.get(n)
            if not p:
                return "reference" if n == "torch" else "n/a"
            o = p["outputs"][out]
            return (f"{fmt(o['max_abs'])} / {fmt(o['mean_abs'])} "
                    f"{'PASS' if o['passed'] else 'FAIL'} (atol {o['atol']:g})")
        rows += [["parity actions max / mean abs"] + [cell(n, "actions") for n in names],
                 ["parity feature max / mean abs"] + [cell(n, "feature") for n in names]]
    return rows


def _mode_rows(report: dict, names: list[str]) -> list[list]:
    b = report["backends"]
    rows = []
    if report["mode"] == "model":
        lat = {n: b[n]["model"]["latency_ms"] for n in names}
        rows += [["step mean ± std (ms)"] + [f"{fmt(lat[n]['mean'])} ± {fmt(lat[n]['std'])}"
                                              for n in names],
                 ["step p50 / p90 / p99 / max (ms)"] + [_pp(lat[n], ("p50", "p90", "p99", "max"))
                                                         for n in names],
                 ["throughput (steps/s)"] + [b[n]["model"]["throughput_steps_s"] for n in names]]
    elif report["mode"] == "pipeline":
        for res in next(iter(b.values()))["pipeline"]:
            stages = {n: b[n]["pipeline"][res]["stages_ms"] for n in names}
            for stage in (*PIPELINE_STAGES, "total"):
                rows.append([f"{res} {stage} p50 / p99 (ms)"] + [_pp(stages[n][stage])
                                                                 for n in names])
            rows.append([f"{res} throughput (frames/s)"] + [
                b[n]["pipeline"][res]["throughput_steps_s"] for n in names])
    else:
        for rate in next(iter(b.values()))["node"]:
            run = {n: b[n]["node"][rate] for n in names}
            for stage in (*NODE_STAGES, "overhead", "end_to_end"):
                rows.append([f"{rate} Hz {stage} p50 / p99 (ms)"] + [
                    _pp(run[n]["stages_ms"][stage]) for n in names])
            rows += [
                [f"{rate} Hz bare subscriber transport p50 / p99 (ms)"] + [
                    _pp(run[n].get("bare_transport", {}).get("transport_ms")) for n in names],
                [f"{rate} Hz overhead p99 / bare transport p99"] + [
                    run[n].get("overhead_ratio") for n in names],
                [f"{rate} Hz jitter p99 (node /diagnostics) (ms)"] + [
                    run[n]["jitter"]["node_diagnostics"]["jitter_p99_ms"] for n in names],
                [f"{rate} Hz jitter p99 / max (bare timer process, same run: the floor) (ms)"]
                + [_pp(run[n]["jitter"].get("bare_timer", {}).get("deviation_ms"),
                       ("p99", "max")) for n in names],
                [f"{rate} Hz jitter p50 / p99 (Twist reception stamps at a Twist-only "
                 "listener) (ms)"] + [
                    _pp(_reception(run[n]).get("deviation_ms")) for n in names],
                [f"{rate} Hz jitter p50 / p99 (Twist reception stamps at a SCHED_FIFO "
                 "Twist-only listener) (ms)"] + [
                    _pp(_reception(run[n], "twist_listener_realtime").get("deviation_ms"))
                    for n in names],
                [f"{rate} Hz publish jitter p50 / p99 (the node's DDS writer stamps of each "
                 "Twist) (ms)"] + [
                    _pp(_reception(run[n]).get("publish", {}).get("deviation_ms"))
                    for n in names],
                [f"{rate} Hz delivery p50 / p99 (writer stamp -> reception; Twist-only "
                 "listener; SCHED_FIFO one) (ms)"] + [
                    f"{_pp(_reception(run[n]).get('delivery_ms'))}; "
                    f"{_pp(_reception(run[n], 'twist_listener_realtime').get('delivery_ms'))}"
                    for n in names],
                [f"{rate} Hz jitter p50 / p99 (Twist arrival at the Twist-only listener's "
                 "callback) (ms)"] + [
                    _pp(run[n]["jitter"].get("twist_listener", {}).get("callback", {})
                        .get("deviation_ms")) for n in names],
                [f"{rate} Hz deadline misses (node diag / Twist intervals > 1.5 periods at "
                 "the listener)"] + [
                    f"{fmt(run[n]['jitter']['node_diagnostics']['deadline_misses'])} / "
                    f"{fmt(_reception(run[n]).get('misses_over_1_5_periods'))}"
                    for n in names],
                [f"{rate} Hz frames sent / received by node / dropped by node / steps"] + [
                    f"{run[n]['frames_sent']} / {fmt(run[n]['node_counters']['frames_received'])}"
                    f" / {fmt(run[n]['node_counters']['frames_dropped'])} / {run[n]['steps']}"
                    for n in names],
                [f"{rate} Hz frames delivered by DDS (received / sent)"] + [
                    run[n]["delivered_fraction"] for n in names],
                [f"{rate} Hz node CPU (% of one core)"] + [
                    run[n]["node_cpu_percent_of_one_core"] for n in names],
                [f"{rate} Hz node peak RSS (MB)"] + [run[n]["node_peak_rss_mb"] for n in names]]
    return rows


def _budget_rows(report: dict) -> list[list]:
    rows = []
    for label, rates in report["control_budget"].items():
        cells = [f"{fmt(100 * v['p99_share'], 1)}% / miss {fmt(100 * v['deadline_miss_rate'], 1)}%"
                 if v["deadline_miss_rate"] is not None else "n/a" for v in rates.values()]
        rows.append([label] + cells)
    return rows


def _limit_rows(report: dict) -> list[list]:
    rows = []
    for name, lim in report["limits"]["per_backend"].items():
        for r in lim["rows"]:
            rows.append([name, r["spec"], lim["precision"], r["bandwidth_gbs"], r["tflops"],
                         r["bytes"] / 1e6, r["flops"] / 1e9, r["memory_ms"], r["compute_ms"],
                         r["bound_ms"], r.get("measured_p50_ms"), r.get("measured_over_limit"),
                         _model_label(report), _device_label(report)])
    return rows


def target_rows(report: dict) -> list[list]:
    """Node mode: the overhead and jitter targets, met or not, per backend and rate."""
    rows = []
    for name, res in report["backends"].items():
        for rate, run in res["node"].items():
            over = run["stages_ms"]["overhead"].get("p99")
            ratio = run.get("overhead_ratio")
            bare = run.get("bare_transport", {}).get("transport_ms", {}).get("p99")
            diag = run["jitter"]["node_diagnostics"]["jitter_p99_ms"]
            floor = run["jitter"].get("bare_timer", {}).get("deviation_ms", {}).get("p99")
            twist = twist_arrival_p99(run)
            twist_rt = (_reception(run, "twist_listener_realtime").get("deviation_ms", {})
                        .get("p99"))
            rows.append([name, rate,
                         f"{fmt(over)} = {fmt(ratio)} x {fmt(bare)} "
                         f"({_met(ratio, OVERHEAD_RATIO_TARGET)})",
                         f"{fmt(diag)} ({_met(diag, JITTER_TARGET_MS)}); bare timer "
                         f"{fmt(floor)}",
                         f"{fmt(twist)} ({_met(twist, TWIST_JITTER_TARGET_MS)}); SCHED_FIFO "
                         f"listener {fmt(twist_rt)} ({_met(twist_rt, TWIST_JITTER_TARGET_MS)})",
                         _model_label(report), _device_label(report)])
    return rows


def _reception(run: dict, listener: str = "twist_listener") -> dict:
    """A Twist-only listener's reception figures ({} where the run has none)."""
    return run["jitter"].get(listener, {}).get("reception") or {}


def twist_arrival_p99(run: dict) -> float | None:
    """The Twist arrival jitter p99 the target is judged on.

    The middleware's reception stamps at the Twist-only listener at normal scheduling (a base
    controller's view: the sample's arrival, before that process's executor); where rclpy gives
    no MessageInfo (Humble), its callback times.
    """
    listener = run["jitter"].get("twist_listener", {})
    for figure in (listener.get("reception"), listener.get("callback")):
        p99 = (figure or {}).get("deviation_ms", {}).get("p99")
        if p99 is not None:
            return p99
    return None


def _met(value, target: float) -> str:
    return "n/a" if value is None else ("met" if value <= target else "NOT met")


def markdown_report(report: dict) -> str:
    """The stdout report: main table, control budget, physical limits (and node targets)."""
    names = list(report["backends"])
    env = report["environment"]
    model, device = _model_label(report), _device_label(report)
    mark = " MIXED-DEVICE" if report.get("mixed_devices") else ""
    out = [f"## vla_bench --mode {report['mode']}: {model}, {report['precision']}, requested "
           f"device {report['requested_device']}{mark}",
           f"{env['cpu_model']}, {env['logical_cpus']} CPUs, {env['ram_gb']} GB RAM, GPU "
           f"{env.get('gpu') or 'none'}; {env['hostname']}, {env['date_utc']}; load average "
           f"{env['loadavg_1_5_15'][0]:.2f} at start, {env['loadavg_end'][0]:.2f} at end; "
           f"iters {report['iters']}, warmup {report['warmup']}", ""]
    rows = [r + [model, device] for r in _common_rows(report, names)
            + _mode_rows(report, names)]
    out.append(markdown_table(["metric", *names, "model", "device"], rows))
    rates = [f"{r:g} Hz" for r in report["control_rates_hz"]]
    out += ["", "Control budget: p99 step as a share of the control period / fraction of steps "
                "longer than the period", ""]
    out.append(markdown_table(["series", *rates, "model", "device"],
                              [r + [model, device] for r in _budget_rows(report)]))
    if report["limits"]["per_backend"]:
        lim = report["limits"]
        out += ["", f"Physical lower bound per step = max(bytes / bandwidth, FLOPs / peak): "
                    f"{lim['flops_per_step'] / 1e9:.3f} GFLOP over {lim['text_tokens']} text "
                    f"tokens (prompt {lim['prompt_len']} ids)", ""]
        out.append(markdown_table(
            ["backend", "spec", "precision", "GB/s", "TFLOPS", "MB/step", "GFLOP/step",
             "memory ms", "compute ms", "bound ms", "measured p50 ms", "measured/bound",
             "model", "ran on"], _limit_rows(report)))
    if report["mode"] == "node":
        out += ["", f"Frames: 640x480 {report.get('image_encoding', 'rgb8')}. Preprocessing: " + (
            "in the graph (--camera-input): the node hands the 640x480 frame to the model "
            "as received; the resize is inside inference" if report.get("camera_input") else
            "model-size graphs: the node resizes each frame on the CPU (preprocess); "
            "--camera-input moves the resize into the graph")]
        out += ["", f"Targets: node overhead (transport + preprocess) p99 <= "
                    f"{OVERHEAD_RATIO_TARGET:g} x the bare subscriber's transport p99 (same "
                    f"frames, same run); control jitter p99 <= {JITTER_TARGET_MS:g} ms (node's "
                    f"own measure), <= {TWIST_JITTER_TARGET_MS:g} ms at Twist arrival (a "
                    "Twist-only listener's middleware reception stamps; its callback times "
                    "without MessageInfo; judged at normal scheduling, a SCHED_FIFO listener "
                    "beside it, as a real-time base controller)", ""]
        out.append(markdown_table(["backend", "rate Hz", "overhead p99 ms = ratio x bare p99",
                                   "jitter p99 ms (node diag); the machine's floor",
                                   "jitter p99 ms (Twist arrival, Twist-only listener)",
                                   "model", "device"], target_rows(report)))
    return "\n".join(out)


def write_plots(folder: Path, report: dict) -> list[str]:
    """Latency CDF per backend; per-stage breakdown for pipeline/node modes. Returns paths."""
    from .analysis import step_series

    folder.mkdir(parents=True, exist_ok=True)
    mode, title = report["mode"], f"{_model_label(report)} on {_device_label(report)}"
    series: dict = {}
    breakdown: dict = {}
    for name, res in report["backends"].items():
        series.update(step_series(name, res, mode))
        if mode == "pipeline":
            for r, v in res["pipeline"].items():
                breakdown[f"{name} {r}"] = {s: v["stages_ms"][s].get("mean")
                                            for s in PIPELINE_STAGES}
        elif mode == "node":
            for r, v in res["node"].items():
                breakdown[f"{name} {r} Hz"] = {s: v["stages_ms"][s].get("mean")
                                               for s in NODE_STAGES}
    paths = [folder / f"latency_cdf_{mode}.png"]
    plot_cdf(paths[0], series, f"vla_bench {mode}: {title}")
    if breakdown:
        paths.append(folder / f"stages_{mode}.png")
        plot_stages(paths[1], breakdown, f"vla_bench {mode} per-stage mean: {title}")
    return [str(p) for p in paths]
