"""Node parameters for the replay tools: a ROS 2 params YAML, CLI options, ``--param k=v``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..core.config import ConfigError, NodeConfig


class ReplayError(RuntimeError):
    """A user-facing error (bad option, input file or bag): one line, exit status 2."""


# -- configuration ---------------------------------------------------------------------------
def load_params_file(path: str | Path) -> dict:
    """Flat parameters from a ROS 2 params YAML (``/**:`` or ``vla_node:`` -> ros__parameters)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ReplayError(f"cannot read params file {str(path)!r}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ReplayError(f"params file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ReplayError(f"params file {str(path)!r} has no '<node>: ros__parameters:' mapping")
    params: dict = {}
    found = False
    # Wildcards first, then node-specific sections override them (as rcl does).
    for key in sorted(data, key=lambda k: "*" not in str(k)):
        section = data[key]
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            if str(key).strip("/").split("/")[-1] not in ("**", "vla_node"):
                continue
            found = True
            for name, value in section["ros__parameters"].items():
                if isinstance(value, dict):
                    raise ReplayError(f"params file {str(path)!r}: nested parameter {name!r} is "
                                      "not a vla_node parameter")
                params[name] = value
    if not found:
        raise ReplayError(f"params file {str(path)!r} has no '/**:' or 'vla_node:' section with "
                          "ros__parameters")
    return params


def build_config(params_file: str | None, overrides: dict, extra: list[str]) -> NodeConfig:
    """NodeConfig from a params file (or defaults), then CLI options, then ``--param k=v``."""
    import yaml

    params = load_params_file(params_file) if params_file else {}
    params.update({k: v for k, v in overrides.items() if v is not None})
    for item in extra:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ReplayError(f"--param {item!r} must look like NAME=VALUE")
        params[name.strip()] = yaml.safe_load(text)
    try:
        config = NodeConfig.from_params(params)
    except ConfigError as exc:
        raise ReplayError(str(exc)) from exc
    # Replay runs in the root namespace and matches bag topics: absolute names throughout.
    return replace(config, topics=config.topics.absolute())
