"""Write ``config/robot.yaml`` from the parameter table in ``core/config.py``.

``make robot-yaml`` regenerates the file; ``--check`` exits 1 when the committed file differs
(test/test_params_yaml.py does the same). Each parameter gets its description, range, choices
and ``[live]`` as a comment. An empty list default stays commented out: the rcl parser cannot
type an empty YAML sequence. ROS-free: only the table is read.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from ..core.config import PARAMETERS, SECTIONS

HEADER = """\
# mobile_vla_node parameters. `/**` applies to any node name or namespace.
# Read-only (structural) parameters are fixed at start-up; those marked [live] can be
# changed at run time (ros2 param set /vla_node NAME VALUE) and are validated first.
# Generated from mobile_vla_node/core/config.py (the single parameter table) by
# `make robot-yaml`; edit the table, not this file.
"""


def yaml_value(value) -> str:
    """One parameter value in YAML that the rcl parser reads back with the same type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:  # PyYAML (launch_ros, rclpy) reads 1e-05 as a string
            mantissa += ".0"
        return f"{mantissa}e{exponent}" if exponent else mantissa
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a double-quoted YAML scalar
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    raise TypeError(f"no YAML form for parameter value {value!r}")


def comment(meta: dict) -> str:
    """The comment line above a parameter: description, range, choices, live."""
    text = meta["doc"]
    if meta.get("lo") is not None or meta.get("hi") is not None:
        lo = "" if meta.get("lo") is None else f"{meta['lo']:g}"
        hi = "" if meta.get("hi") is None else f"{meta['hi']:g}"
        text += f"; range {lo}..{hi}"
    if meta.get("choices"):
        text += "; one of " + ", ".join(str(c) for c in meta["choices"])
    if meta.get("live"):
        text += " [live]"
    return f"# {text}"


def render() -> str:
    """The whole parameters file, parameters in table order, grouped by section."""
    lines = [HEADER.rstrip("\n"), "/**:", "  ros__parameters:"]
    for key, section in SECTIONS.items():
        lines.append(f"    # --- {key} ---")
        for f in fields(section):
            meta = PARAMETERS[f.name]
            lines.append(f"    {comment(meta)}")
            value = meta["default"]
            if isinstance(value, (list, tuple)) and not value:
                # rcl cannot type an empty YAML list (ros2/rclcpp#1955): leave the node's default
                lines.append(f"    # {f.name}: []  (empty: the node's default)")
            else:
                lines.append(f"    {f.name}: {yaml_value(value)}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Write (default) or check the parameters file; exit 1 on a stale file with --check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="config/robot.yaml",
                        help="file to write or check ('-': stdout)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the file differs from the table")
    args = parser.parse_args(argv)
    text = render()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    if args.check:
        current = path.read_text() if path.is_file() else None
        if current != text:
            print(f"{path} is out of date with core/config.py: run `make robot-yaml`",
                  file=sys.stderr)
            return 1
        print(f"{path} is up to date ({len(PARAMETERS)} parameters)")
        return 0
    path.write_text(text)
    print(f"wrote {path} ({len(PARAMETERS)} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
