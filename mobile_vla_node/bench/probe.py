"""The baseline subscribers of `vla_bench --mode node`: the bare subscriber, the Twist listeners.

Each runs in its own process, started by the bench beside the node: a plain rclpy node, the
default ``SingleThreadedExecutor``, and callbacks that only read a clock. One program, two roles:

* the **bare subscriber** (camera topic, no /cmd_vel): it sees the same frames as the node (same
  topic, same QoS, same publisher, same run), so its transport (receive time - header stamp, on
  ROS time like the node's own) is what DDS plus a Python subscriber cost here, and the node's
  overhead is stated as a ratio to it;
* a **Twist listener** (/cmd_vel only, as a robot's base controller): /cmd_vel arrival times. Two
  clocks per Twist: the callback's ``time.monotonic()`` (after this process's executor) and,
  where rclpy passes a ``MessageInfo`` (``Subscription.CallbackType``, rclpy >= Iron), its
  ``received_timestamp`` (Fast DDS: taken in the DDS receive thread, before any Python of this
  process runs) and ``source_timestamp`` (the node's DDS writer's stamp at publish).

Protocol: ``python -m mobile_vla_node.bench.probe IMAGE_TOPIC CMD_VEL_TOPIC [raw|compressed
[PRIORITY]]`` (the camera message type: ``sensor_msgs/Image`` or ``CompressedImage``, default raw;
IMAGE_TOPIC or CMD_VEL_TOPIC ``-``: no subscription to it; PRIORITY > 0: the process asks for
SCHED_FIFO at that priority before ``rclpy.init``, so the middleware's receive threads inherit
it, as a real-time base controller's would). It prints ``ready`` once a Twist from the node
arrived (discovery is done; with no /cmd_vel subscription, as soon as it has subscribed: the
bench then waits for the camera publisher's match), and at end of stdin (the bench closes the
pipe) one JSON line: ``{"frames": [[monotonic_s, stamp_s, transport_ms], ...],
"twists": [monotonic_s, ...], "twists_received": [[monotonic_s, received_s, source_s], ...],
"scheduling": "..."}`` (``twists_received`` empty without MessageInfo; ``source_s`` is 0 where
the middleware gives none). Times are ``time.monotonic()`` (CLOCK_MONOTONIC on Linux: one clock
for all processes), so the bench selects the same window it measured.
"""

from __future__ import annotations

import json
import sys
import threading
import time


def main(argv=None) -> int:
    """Record until stdin closes, then print the record."""
    import rclpy
    from geometry_msgs.msg import Twist
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.subscription import Subscription
    from sensor_msgs.msg import CompressedImage, Image

    from ..ros.control_thread import set_realtime
    from ..ros.qos import profile

    args = list(argv if argv is not None else sys.argv[1:])
    image_topic, cmd_vel_topic = args[:2]
    image_type = CompressedImage if args[2:3] == ["compressed"] else Image
    # before rclpy.init: the DDS threads it starts inherit the policy
    scheduling = set_realtime(int(args[3])) if args[3:4] else "normal"
    frames: list = []
    twists: list = []
    ready = threading.Event()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("vla_bench_probe", context=context)
    clock = node.get_clock()

    def on_image(msg) -> None:
        mono, now = time.monotonic(), clock.now().nanoseconds * 1e-9
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        frames.append((mono, stamp, (now - stamp) * 1e3))

    received: list = []

    def on_twist(_msg, info) -> None:   # two parameters: rclpy then passes MessageInfo
        mono = time.monotonic()
        twists.append(mono)
        stamp = info.get("received_timestamp") if info is not None else None
        if stamp:   # 0 where the middleware does not fill it
            source = info.get("source_timestamp") or 0
            received.append((mono, stamp * 1e-9, source * 1e-9))
        if not ready.is_set():
            ready.set()
            print("ready", flush=True)

    if image_topic != "-":   # "-": a Twist listener only (a base controller's view)
        node.create_subscription(image_type, image_topic, on_image, profile("camera"))
    # rclpy without MessageInfo callbacks (Humble) gets a one-argument callback
    with_info = hasattr(Subscription, "CallbackType")
    if cmd_vel_topic != "-":
        node.create_subscription(Twist, cmd_vel_topic,
                                 on_twist if with_info else (lambda msg: on_twist(msg, None)),
                                 profile("record"))
    else:   # nothing to wait for here: the bench waits for the camera publisher's match
        ready.set()
        print("ready", flush=True)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    done = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.read()
        done.set()  # the spin loop below notices within its 0.1 s slice

    threading.Thread(target=wait_stdin, daemon=True).start()
    try:
        while not done.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.1)
    finally:
        print(json.dumps({"frames": frames, "twists": twists, "twists_received": received,
                          "scheduling": scheduling}),
              flush=True)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
