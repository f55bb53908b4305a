"""A separate publisher process for test/test_node_qos.py: publishes /vla/command and /vla/enable
with the QoS a user's node or ``ros2 topic pub`` would use, then stays up (a latched history
lives as long as its writer) until SIGINT/SIGTERM.

    python test/qos_publisher.py --durability volatile --wait-subscriptions 1 \
        --enable true --command "turn left"

Prints ``published`` once every message is out (after the wait, if any). If the wait has not
ended after ``--timeout`` seconds, it says so on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durability", choices=("volatile", "transient_local"), required=True)
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable")
    parser.add_argument("--wait-subscriptions", type=int, default=0,
                        help="before publishing, wait until each publisher matches this many "
                             "readers (as `ros2 topic pub --once` waits for one)")
    parser.add_argument("--enable", choices=("true", "false"))
    parser.add_argument("--command", action="append", default=[],
                        help="an instruction to publish (repeatable: published in order)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the subscriptions before giving up (exit 1)")
    args = parser.parse_args(argv)

    import rclpy
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool, String

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    rclpy.init()
    node = rclpy.create_node("qos_publisher")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(1, len(args.command)),
                     reliability=ReliabilityPolicy[args.reliability.upper()],
                     durability=DurabilityPolicy[args.durability.upper()])
    publishers = []
    if args.enable:
        publishers.append((node.create_publisher(Bool, "/vla/enable", qos),
                           [Bool(data=args.enable == "true")]))
    if args.command:
        publishers.append((node.create_publisher(String, "/vla/command", qos),
                           [String(data=text) for text in args.command]))
    deadline = time.monotonic() + args.timeout
    try:
        while not all(pub.get_subscription_count() >= args.wait_subscriptions
                      for pub, _ in publishers):
            if time.monotonic() > deadline:
                counts = [pub.get_subscription_count() for pub, _ in publishers]
                print(f"qos_publisher: gave up after {args.timeout:g} s: subscriptions {counts}, "
                      f"wanted {args.wait_subscriptions} each", file=sys.stderr, flush=True)
                return 1
            rclpy.spin_once(node, timeout_sec=0.05)
        for pub, messages in publishers:
            for msg in messages:
                pub.publish(msg)
        print("published", flush=True)
        while True:
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
