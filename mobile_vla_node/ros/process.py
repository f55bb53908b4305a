"""Starting the node as its own process (tools and tests): argv, loopback-only DDS, stopping.

DDS and discovery variables differ between ROS 2 distributions, and `dds_env` alone decides them
(docs/DISTROS.md):

* loopback-only discovery: Humble (and older) reads only ``ROS_LOCALHOST_ONLY=1``; Iron brought
  ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``; Jazzy prints two deprecation warnings at every
  ``rclpy.init`` while ``ROS_LOCALHOST_ONLY`` is set; Kilted no longer reads it at all.
* the Fast DDS profile file: Fast DDS 2.x (Humble 2.6, Iron 2.10, Jazzy 2.14) reads only
  ``FASTRTPS_DEFAULT_PROFILES_FILE``; Fast DDS 3.x (Kilted 3.2 and later) reads only
  ``FASTDDS_DEFAULT_PROFILES_FILE``. Neither warns about the other name: it is silently ignored.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

PROFILE_NAME = "fastdds_large_images.xml"
NODE_MODULE = "mobile_vla_node.ros.main"
# rclpy's major version -> distribution, newest first (pip wheels set no ROS_DISTRO).
RCLPY_MAJOR_DISTROS = ((9, "kilted"), (7, "jazzy"), (4, "iron"), (0, "humble"))
# Distributions whose rcl knows only ROS_LOCALHOST_ONLY (no ROS_AUTOMATIC_DISCOVERY_RANGE).
LOCALHOST_ONLY_DISTROS = ("foxy", "galactic", "humble")
# Distributions whose Fast DDS is 2.x (reads FASTRTPS_DEFAULT_PROFILES_FILE only).
FASTDDS2_DISTROS = ("foxy", "galactic", "humble", "iron", "jazzy")
LOCALHOST_ONLY = "ROS_LOCALHOST_ONLY"
DISCOVERY_RANGE = "ROS_AUTOMATIC_DISCOVERY_RANGE"
PROFILE_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


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


@functools.lru_cache(maxsize=1)
def _rclpy_version() -> str | None:
    """The version of the rclpy this interpreter would import (apt egg-info or pip wheel)."""
    from importlib import metadata

    for dist in ("rclpy", "ros-rclpy"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def ros_distro() -> str:
    """The ROS 2 distribution of this Python, lower case: from rclpy's version, else ROS_DISTRO.

    rclpy comes first because it is what this Python (and the node processes started with
    ``sys.executable``) will load; a ROS_DISTRO left over in the shell can be stale. Without
    either: "" (treated as the newest distribution).
    """
    version = _rclpy_version()
    if version:
        try:
            major = int(version.split(".")[0])
        except ValueError:
            major = None
        if major is not None:
            return next(name for first, name in RCLPY_MAJOR_DISTROS if major >= first)
    return os.environ.get("ROS_DISTRO", "").strip().lower()


def profile_variable(distro: str | None = None) -> str:
    """The Fast DDS profile variable this distribution's Fast DDS reads."""
    distro = ros_distro() if distro is None else distro
    return PROFILE_VARS[0] if distro in FASTDDS2_DISTROS else PROFILE_VARS[1]


def discovery_variable(distro: str | None = None) -> str:
    """The loopback-only discovery variable this distribution reads without a warning."""
    distro = ros_distro() if distro is None else distro
    return LOCALHOST_ONLY if distro in LOCALHOST_ONLY_DISTROS else DISCOVERY_RANGE


def set_dds_env(env: MutableMapping, distro: str | None = None, profile: bool = True) -> dict:
    """Set loopback-only discovery and the large-image profile in ``env`` for ``distro``.

    Exactly the variables that distribution reads are left: what the user set under the other
    name moves to the one that is read (``ROS_LOCALHOST_ONLY=1`` <-> ``ROS_AUTOMATIC_DISCOVERY_
    RANGE=LOCALHOST``; ``FASTDDS_``/``FASTRTPS_DEFAULT_PROFILES_FILE``), the other name is removed,
    and a value the user set under the read name wins (an empty profile value means: Fast DDS
    defaults). Returns {name: value or None (removed)} of what this changed.
    """
    distro = ros_distro() if distro is None else distro
    before = {k: env.get(k) for k in (LOCALHOST_ONLY, DISCOVERY_RANGE, *PROFILE_VARS)}
    if discovery_variable(distro) == LOCALHOST_ONLY:
        if LOCALHOST_ONLY not in env:
            user_range = env.get(DISCOVERY_RANGE, "LOCALHOST").strip().upper()
            env[LOCALHOST_ONLY] = "1" if user_range in ("LOCALHOST", "") else "0"
        env.pop(DISCOVERY_RANGE, None)
    else:
        if DISCOVERY_RANGE not in env:
            if env.get(LOCALHOST_ONLY, "1").strip() in ("1", ""):
                env[DISCOVERY_RANGE] = "LOCALHOST"
        env.pop(LOCALHOST_ONLY, None)
    read = profile_variable(distro)
    other = next(v for v in PROFILE_VARS if v != read)
    if read not in env:
        if other in env:
            env[read] = env[other]
        elif profile:
            shipped = fastdds_profile()
            if shipped is not None:
                env[read] = str(shipped)
    env.pop(other, None)
    return {k: env.get(k) for k, v in before.items() if env.get(k) != v}


def dds_env(base: dict | None = None, distro: str | None = None, profile: bool = True) -> dict:
    """A copy of ``base`` (default: this process's environment) with `set_dds_env` applied."""
    env = dict(os.environ if base is None else base)
    set_dds_env(env, distro, profile)
    return env


def dds_profile_in_use(env: dict | None = None, distro: str | None = None) -> dict:
    """Which profile variable Fast DDS reads here and its file (None: Fast DDS defaults)."""
    env = os.environ if env is None else env
    distro = ros_distro() if distro is None else distro
    variable = profile_variable(distro)
    return {"ros_distro": distro or None, "variable": variable,
            "file": env.get(variable) or None}


def loopback_env(domain: int | str = 77, apply: bool = True) -> dict:
    """Child environment with DDS on loopback, a domain id, and the large-image profile.

    The DDS variables are those of this distribution (`set_dds_env`); values already set by the
    user win. With ``apply`` this process's environment gets the same (before rclpy.init) so its
    own participant matches the children.
    """
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(domain))
    set_dds_env(env)
    env["PYTHONUNBUFFERED"] = "1"
    if apply:
        for key in ("ROS_DOMAIN_ID", LOCALHOST_ONLY, DISCOVERY_RANGE, *PROFILE_VARS):
            if key in env:
                os.environ[key] = env[key]
            else:
                os.environ.pop(key, None)
    return env


# Domains the demos and vla_stress use by default; a reserved domain is never one of them.
SHARED_DOMAINS = (54, 77)
_domain_locks: list = []


def reserve_domain(skip=()) -> int | None:
    """A ROS domain (1..101) no other test run or sim on this machine holds, else None.

    Held through a lock file in the temp folder for the life of this process; the tests
    (test/conftest.py) and `vla_sim` share the files, so they never cross-talk.
    """
    import fcntl
    import tempfile

    free = [d for d in range(1, 102) if d not in SHARED_DOMAINS and d not in skip]
    start = os.getpid() % len(free)
    for i in range(len(free)):
        domain = free[(start + i) % len(free)]
        path = os.path.join(tempfile.gettempdir(), f"mobile_vla_node_test_domain_{domain}.lock")
        handle = open(path, "w")  # noqa: SIM115 - held for the life of the process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _domain_locks.append(handle)
        return domain
    return None


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
