"""ROS parameters from the table in ``core/config.py``: one static type each, no dynamic typing.

Every parameter is declared with the ROS type of its default (a float parameter is DOUBLE, a
list of strings STRING_ARRAY, ...), so ``ros2 param get`` and ``ros2 param dump`` show that type
and a value of another type is refused by rclpy with its own reason. Three things need care,
and are the same on Humble and newer:

* A params file (or ``-p``) that writes a float parameter as ``1``, or ``action_sign`` as
  ``[-1, 1, 1]``, gives rclpy an INTEGER (INTEGER_ARRAY) override; it is converted to the
  parameter's type before declaring. Any other kind mismatch is a `ConfigError` naming it.
* An empty list in a params file (``allowed_instructions: []``, as ``ros2 param dump`` writes
  it) reaches rclpy as an unset override: rcl cannot type an empty YAML sequence. For a list
  parameter that means the empty list.
* rclpy types a bare ``[]`` as a byte array, so a list parameter whose value starts empty is
  declared by type (writable), set to an empty list of that type, and then given its real
  descriptor with ``set_descriptor`` (read-only ones too).

At run time, rclpy newer than Humble lets a pre-set callback adjust a request: there
``ros2 param set NODE image_timeout_s 1`` sets 1.0, and ``... allowed_instructions "[]"`` (which
ros2param sends as an empty bool array) sets an empty string array. On Humble both are refused
("Wrong parameter type"): write ``1.0``, and empty a list from a params file.
"""

from __future__ import annotations

import array

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from ..core.config import ConfigError

ARRAY_TYPES = {"str": Parameter.Type.STRING_ARRAY, "float": Parameter.Type.DOUBLE_ARRAY}


def ros_type(spec: dict) -> Parameter.Type:
    """The one ROS type of a parameter of the table."""
    default = spec["default"]
    if isinstance(default, bool):
        return Parameter.Type.BOOL
    if isinstance(default, int):
        return Parameter.Type.INTEGER
    if isinstance(default, float):
        return Parameter.Type.DOUBLE
    if isinstance(default, str):
        return Parameter.Type.STRING
    return ARRAY_TYPES[spec["items"]]


def is_array(ptype: Parameter.Type) -> bool:
    """Whether ``ptype`` is one of the ROS array types."""
    return ptype in (Parameter.Type.STRING_ARRAY, Parameter.Type.DOUBLE_ARRAY,
                     Parameter.Type.INTEGER_ARRAY, Parameter.Type.BOOL_ARRAY,
                     Parameter.Type.BYTE_ARRAY)


def descriptor(spec: dict, ptype: Parameter.Type) -> ParameterDescriptor:
    """Description, read-only flag, type and range of one parameter."""
    desc = ParameterDescriptor(description=spec["doc"], read_only=not spec["live"],
                               type=ptype.value)
    if spec["choices"]:
        desc.additional_constraints = f"one of {list(spec['choices'])}"
    if spec["lo"] is not None and ptype == Parameter.Type.DOUBLE:
        desc.floating_point_range = [FloatingPointRange(from_value=float(spec["lo"]),
                                                        to_value=float(spec["hi"]))]
    elif spec["lo"] is not None and ptype == Parameter.Type.INTEGER:
        desc.integer_range = [IntegerRange(from_value=int(spec["lo"]), to_value=int(spec["hi"]))]
    return desc


def conform(name: str, param: Parameter, ptype: Parameter.Type) -> Parameter | None:
    """``param`` (an override or a set request) as a value of ``ptype``.

    Returns None when it cannot be converted (the caller decides what that means); an unset or
    empty array becomes an empty array of ``ptype``.
    """
    value = param.value
    if param.type_ == ptype:
        return param
    if is_array(ptype) and (param.type_ == Parameter.Type.NOT_SET or
                            (is_array(param.type_) and len(value) == 0)):
        return Parameter(name, ptype, [])
    if ptype == Parameter.Type.DOUBLE and param.type_ == Parameter.Type.INTEGER:
        return Parameter(name, ptype, float(value))
    if ptype == Parameter.Type.DOUBLE_ARRAY and param.type_ == Parameter.Type.INTEGER_ARRAY:
        return Parameter(name, ptype, [float(v) for v in value])
    return None


def declare_parameters(node, table: dict) -> None:
    """Declare every parameter of ``table`` with its static type (module docstring).

    Params-file and ``-p`` values are rclpy's ``_parameter_overrides`` (Humble and newer); they
    are conformed to the parameter's type first. Raises `ConfigError` for a value of another
    kind.
    """
    overrides = node._parameter_overrides
    for name, spec in table.items():
        ptype = ros_type(spec)
        initial = spec["default"]
        if name in overrides:
            given = overrides[name]
            param = conform(name, given, ptype)
            if param is None:
                raise ConfigError(f"parameter {name}={given.value!r} must be of ROS type "
                                  f"{ptype.name} (like {spec['default']!r})")
            overrides[name] = param
            initial = param.value
        desc = descriptor(spec, ptype)
        if is_array(ptype) and len(initial) == 0:
            # rclpy would type [] as a byte array: declare by type (writable for a moment), set
            # the typed empty list, then give the parameter its real descriptor.
            overrides.pop(name, None)
            writable = descriptor(spec, ptype)
            writable.read_only = False
            node.declare_parameter(name, ptype, writable)
            result = node.set_parameters([Parameter(name, ptype, [])])[0]
            if not result.successful:
                raise ConfigError(f"parameter {name}: {result.reason}")
            node.set_descriptor(name, desc)
        else:
            node.declare_parameter(name, initial, desc)
    if hasattr(node, "add_pre_set_parameters_callback"):  # newer than Humble
        node.add_pre_set_parameters_callback(lambda params: conform_requests(params, table))


def conform_requests(params: list, table: dict) -> list:
    """Pre-set callback: an INTEGER for a DOUBLE parameter, or an empty array of any type."""
    out = []
    for param in params:
        spec = table.get(param.name)
        fixed = conform(param.name, param, ros_type(spec)) if spec is not None else None
        out.append(fixed if fixed is not None and param.type_ != Parameter.Type.NOT_SET
                   else param)
    return out


def parameter_values(node, table: dict) -> dict:
    """``{name: value}`` of the declared parameters (arrays as lists, an unset array as [])."""
    values = {}
    for name, spec in table.items():
        param = node.get_parameter_or(name, Parameter(name, Parameter.Type.NOT_SET))
        values[name] = plain(param.value, is_array(ros_type(spec)))
    return values


def plain(value, array_type: bool):
    """A parameter value as the config takes it: arrays (array.array, tuple, unset) as lists."""
    if array_type or isinstance(value, (array.array, tuple)):
        return [] if value is None else list(value)
    return value
