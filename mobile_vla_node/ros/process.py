"""Starting the node as its own process (tools and tests): argv, loopback-only DDS, stopping."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROFILE_NAME = "fastdds_large_images.xml"
NODE_MODULE = "mobile_vla_node.ros.main"


def node_argv(params: dict | None = None, extra_args=()) -> list:
    """``python -m <node module> --ros-args ... -p name:=value`` for a parameter dict."""
    args = [sys.executable, "-m", NODE_MODULE, "--ros-args", *extra_args]
    for name, value in (params or {}).items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, (list, tuple)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        args += ["-p", f"{name}:={value}"]
    return args


def fastdds_profile() -> Path | None:
    """The shipped Fast DDS large-image profile (installed share/ or the source tree)."""
    candidates = [Path(sys.prefix) / "share" / "mobile_vla_node" / "config" / PROFILE_NAME,
                  Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.insert(0, Path(get_package_share_directory("mobile_vla_node")) / "config" /
                          PROFILE_NAME)
    except Exception:  # not in an ament environment (pip/venv install)
        pass
    return next((p for p in candidates if p.is_file()), None)


def loopback_env(domain: int | str = 77, apply: bool = True) -> dict:
    """Child environment with DDS on loopback, a domain id, and the large-image profile.

    Values already set by the user win. With ``apply`` the same keys are set in this process
    (before rclpy.init) so its own participant matches the children.
    """
    keys = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1",
            "ROS_DOMAIN_ID": str(domain)}
    profile = fastdds_profile()
    if profile is not None:
        keys["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    env = dict(os.environ)
    for key, value in keys.items():
        env.setdefault(key, value)
    env["PYTHONUNBUFFERED"] = "1"
    if apply:
        for key in keys:
            os.environ[key] = env[key]
    return env


def stop_node(proc, timeout: float = 10.0) -> int:
    """Stop a node process like Ctrl-C does (it publishes zeros first); kill it if it hangs."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
