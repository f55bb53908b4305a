"""The environment block of a `vla_bench` report (machine, libraries, settings) and memory."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from ..ros.process import dds_profile_in_use

# Environment variables that change what is measured (threads, DDS transport).
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "RMW_IMPLEMENTATION",
            "ROS_DOMAIN_ID", "ROS_LOCALHOST_ONLY", "ROS_AUTOMATIC_DISCOVERY_RANGE",
            "FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE",
            "FASTDDS_BUILTIN_TRANSPORTS", "RMW_FASTRTPS_PUBLICATION_MODE", "ROS_DISTRO")
LIBRARIES = ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "transformers", "numpy",
             "onnx", "pillow", "opencv-python-headless", "psutil", "nvidia-ml-py", "rclpy",
             "ros-rclpy", "ros-rmw-fastrtps-cpp", "ros-fastdds", "ros-fastrtps")


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident set (``VmHWM``) of a live process in MB; None where /proc has none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> dict:
    """GPU name, driver and CUDA as torch and nvidia-smi see them (without starting CUDA work)."""
    out: dict = {"gpu": None, "driver": None, "cuda_runtime": None}
    try:
        import torch

        out["cuda_runtime"] = torch.version.cuda
        if torch.cuda.is_available():
            out["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        if smi.returncode == 0 and smi.stdout.strip():
            rows = [r.split(", ") for r in smi.stdout.strip().splitlines()]
            out["gpu"] = out["gpu"] or [r[0] for r in rows]
            out["driver"] = rows[0][1] if len(rows[0]) > 1 else None
    except (OSError, subprocess.TimeoutExpired):
        out["nvidia_smi"] = "not found"
    return out


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


def environment(argv: list[str]) -> dict:
    """Machine, libraries and the command line, for the JSON's environment block."""
    import psutil

    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = "n/a: onnxruntime not importable"
    return {
        "hostname": socket.gethostname(), "date_utc": datetime.now(timezone.utc).isoformat(),
        "command": " ".join(shlex.quote(a) for a in ["vla_bench", *argv]),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu_model": _cpu_model(), "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "loadavg_1_5_15": list(os.getloadavg()),
        **_gpu(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "ort_providers": providers, "git_commit": _git_commit(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        # The Fast DDS profile variable that this distribution's Fast DDS reads, and its file
        # (None: Fast DDS defaults); the other name, if set, is ignored by Fast DDS.
        "dds_profile": dds_profile_in_use(),
    }
