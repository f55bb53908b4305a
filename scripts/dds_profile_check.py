"""Does the large-image Fast DDS profile apply here, and what does it change? (docs/DISTROS.md)

Two processes on this ROS 2 distribution: one publishes ``--frames`` 640x480 rgb8 images (921,600
bytes, the node's camera QoS: best effort, depth 1) at ``--rate-hz``, the other counts what
arrives and lists the Fast DDS shared-memory segments its participant mapped. Run once with the
profile under the variable this distribution's Fast DDS reads (ros/process.py dds_env) and once
without it (Fast DDS defaults):

    .venv/bin/python scripts/dds_profile_check.py          # Kilted (FASTDDS_DEFAULT_PROFILES_FILE)
    .venv-jazzy/bin/python scripts/dds_profile_check.py    # Jazzy (FASTRTPS_DEFAULT_PROFILES_FILE)

``--other-name`` adds a run with the profile under the name this Fast DDS does not read.

Delivery counts depend on the machine's load; the 16 MiB segment does not. Exit 1 if the profile
did not change the segment size.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time

TOPIC = "dds_profile_check/image"
DONE = "dds_profile_check/done"
WIDTH, HEIGHT = 640, 480


def reserve_domain():
    """(domain, lock) that no test run or other check holds: test/conftest.py's lock files."""
    for domain in [d for d in range(1, 102) if d not in (54, 77)]:
        path = os.path.join(tempfile.gettempdir(), f"mobile_vla_node_test_domain_{domain}.lock")
        handle = open(path, "w")  # noqa: SIM115 - held until this check exits
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return domain, handle
    raise SystemExit("dds_profile_check: no free ROS domain")


def segments() -> dict:
    """Fast DDS shared-memory segments this process mapped: path -> bytes."""
    out: dict = {}
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if (len(parts) >= 6 and parts[5].startswith("/dev/shm/fast")
                    and "_port" not in parts[5]):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out[parts[5]] = out.get(parts[5], 0) + hi - lo
    return out


def subscriber() -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import UInt32

    from mobile_vla_node.ros.qos import profile

    rclpy.init()
    node = rclpy.create_node("dds_profile_check_sub")
    got = {"frames": 0, "sent": None}
    node.create_subscription(Image, TOPIC, lambda m: got.__setitem__("frames", got["frames"] + 1),
                             profile("camera"))
    node.create_subscription(UInt32, DONE, lambda m: got.__setitem__("sent", m.data),
                             profile("command"))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print("READY", flush=True)
    deadline = time.monotonic() + 120.0  # a safety stop, not a measurement
    while got["sent"] is None and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    end = time.monotonic() + 1.0  # frames still in flight
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    print("RESULT " + json.dumps({"received": got["frames"], "sent": got["sent"],
                                  "segments": segments()}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def publisher(frames: int, rate_hz: float) -> None:
    import rclpy
    from sensor_msgs.msg import Image
    from std_msgs.msg import UInt32

    from mobile_vla_node.ros.qos import profile

    rclpy.init()
    node = rclpy.create_node("dds_profile_check_pub")
    pub = node.create_publisher(Image, TOPIC, profile("camera"))
    done = node.create_publisher(UInt32, DONE, profile("command"))
    while pub.get_subscription_count() < 1 or done.get_subscription_count() < 1:
        time.sleep(0.05)
    time.sleep(0.5)  # discovery settles both ways
    msg = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3)
    msg.data = bytes(WIDTH * HEIGHT * 3)
    t0 = time.monotonic()
    for i in range(frames):
        time.sleep(max(0.0, t0 + i / rate_hz - time.monotonic()))
        pub.publish(msg)
    done.publish(UInt32(data=frames))
    time.sleep(1.5)  # the latched count reaches the reader before this writer goes
    node.destroy_node()
    rclpy.shutdown()


def run_case(env: dict, frames: int, rate_hz: float) -> dict:
    me = [sys.executable, os.path.abspath(__file__)]
    sub = subprocess.Popen([*me, "--role", "sub"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in sub.stdout:
        lines.append(line)
        if line.startswith("READY"):
            break
    pub = subprocess.run([*me, "--role", "pub", "--frames", str(frames), "--rate-hz",
                          str(rate_hz)], env=env, capture_output=True, text=True, timeout=300)
    rest, _ = sub.communicate(timeout=300)
    out = "".join(lines) + rest + pub.stdout + pub.stderr
    result = next((json.loads(ln.split(" ", 1)[1]) for ln in out.splitlines()
                   if ln.startswith("RESULT ")), None)
    if result is None or pub.returncode != 0:
        raise SystemExit(f"dds_profile_check: a child failed:\n{out}")
    result["warnings"] = [ln for ln in out.splitlines() if "WARN" in ln]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("sub", "pub"))
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--rate-hz", type=float, default=30.0)
    parser.add_argument("--other-name", action="store_true",
                        help="also run with the profile under the name this Fast DDS does not "
                             "read (FASTDDS_ on Jazzy/Humble, FASTRTPS_ on Kilted)")
    parser.add_argument("--domain", type=int,
                        help="ROS domain (default: a free one, locked like the tests do)")
    args = parser.parse_args()
    if args.role == "sub":
        subscriber()
        return 0
    if args.role == "pub":
        publisher(args.frames, args.rate_hz)
        return 0
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from mobile_vla_node.ros.process import PROFILE_VARS, dds_env, profile_variable, ros_distro

    domain, _lock = (args.domain, None) if args.domain is not None else reserve_domain()
    base = dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join(p for p in (sys.path[0], os.environ.get("PYTHONPATH"))
                                           if p))
    variable = profile_variable()
    print(f"ROS 2 {ros_distro() or '?'}: the profile goes in {variable}; {args.frames} frames of "
          f"{WIDTH}x{HEIGHT} rgb8 at {args.rate_hz:g} Hz, best effort, depth 1; domain "
          f"{domain}; load {os.getloadavg()[0]:.2f}")
    with_profile = dds_env(base)
    other = next(v for v in PROFILE_VARS if v != variable)
    # the profile under the other name only (what the code set before dds_env, on Jazzy)
    other_only = {k: v for k, v in with_profile.items() if k != variable}
    other_only[other] = with_profile[variable]
    cases = [("profile", with_profile, variable), ("no profile", dds_env({**base, variable: ""}),
                                                   variable)]
    if args.other_name:
        cases.append(("other name", other_only, other))
    largest = {}
    for name, env, shown in cases:
        r = run_case(env, args.frames, args.rate_hz)
        largest[name] = max(r["segments"].values(), default=0)
        print(f"  {name:>10}: {shown}={env.get(shown) or '(empty)'}: received "
              f"{r['received']}/{r['sent']} frames; largest shared-memory segment "
              f"{largest[name] / 2**20:.2f} MiB" + (f"; {r['warnings']}" if r["warnings"] else ""))
    return 0 if largest["profile"] > largest["no profile"] else 1


if __name__ == "__main__":
    sys.exit(main())
