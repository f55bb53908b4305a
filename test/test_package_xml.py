"""package.xml: only rosdep keys verified for Humble, every imported ROS package declared.

The allow-list is a committed snapshot (test/data/rosdep_humble_keys.txt, with the ros/rosdistro
commit it was read from), so this test runs offline. A new dependency means: check the key in
rosdistro for Humble/jammy, add it to the snapshot, then to package.xml.
"""

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mobile_vla_node"
SNAPSHOT = ROOT / "test" / "data" / "rosdep_humble_keys.txt"
# Run-time subpackages: what the robot process may import (the rest are developer tools).
RUN_TIME = ("ros", "core", "backends", "model")
# Top-level modules that name a ROS package without a ROS-looking suffix.
ROS_NAMES = {"rclpy", "launch", "launch_ros", "ament_index_python", "launch_testing"}
ROS_SUFFIXES = ("_msgs", "_srvs", "_interfaces", "_actions")
# Third-party module -> where it is installed from on the robot (rosdep key or pip project).
THIRD_PARTY = {
    "numpy": "python3-numpy", "cv2": "python3-opencv", "PIL": "python3-pil",
    "tokenizers": "tokenizers", "safetensors": "safetensors", "transformers": "transformers",
    "onnx": "onnx", "cuda": "cuda-python",
}
# Installed from JetPack on the robot, never by rosdep or pip (docs/JETSON.md).
JETPACK = {"torch", "tensorrt", "onnxruntime"}
# Optional: imported inside try/except ImportError with a fallback, never needed to run.
OPTIONAL = {"tqdm"}


def snapshot() -> dict:
    """``{key: kind}`` from the committed rosdep snapshot (kind: ros, system or forbid)."""
    keys = {}
    for line in SNAPSHOT.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, kind = line.split()[:2]
            keys[key] = kind
    return keys


def declared() -> dict:
    """``{tag: [keys]}`` of every ``*depend`` element of package.xml."""
    out = {}
    for el in ET.parse(ROOT / "package.xml").getroot():
        if isinstance(el.tag, str) and el.tag.endswith("depend"):
            out.setdefault(el.tag, []).append(el.text.strip())
    return out


def imports(paths) -> dict:
    """``{top-level module: {files}}`` of the absolute imports in the given Python files."""
    found = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def is_ros(module: str) -> bool:
    """Whether a top-level module is a ROS package (rosdep key = package name)."""
    return module in ROS_NAMES or module.endswith(ROS_SUFFIXES)


def requirement_names(path: Path) -> set:
    """Project names listed in a requirements file."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower())
    return names


def package_files():
    """Every Python file of the package plus the launch files."""
    return sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "launch").glob("*.py"))


def test_snapshot_names_its_source():
    text = SNAPSHOT.read_text()
    assert re.search(r"github\.com/ros/rosdistro at commit [0-9a-f]{40}", text)
    kinds = set(snapshot().values())
    assert kinds == {"ros", "system", "forbid"}


def test_package_xml_format_and_build_type():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "mobile_vla_node"
    assert root.find("export").findtext("build_type") == "ament_python"


def test_every_dependency_is_a_verified_humble_key():
    keys = snapshot()
    deps = declared()
    assert deps, "package.xml declares no dependencies"
    for tag, names in deps.items():
        for name in names:
            assert name in keys, (f"<{tag}>{name}</{tag}> is not in {SNAPSHOT.name}; verify it "
                                  "against rosdistro for Humble first")
            assert keys[name] != "forbid", f"<{tag}>{name}</{tag}> must not be used: see snapshot"
        assert len(names) == len(set(names)), f"duplicate <{tag}> entries"


def test_no_torch_and_no_pip_keys():
    """rosdep pip keys run ``sudo pip``; the robot's pip packages are in requirements-robot.txt."""
    everything = [n for names in declared().values() for n in names]
    assert not [n for n in everything if "torch" in n or n.endswith("-pip")]


def test_every_imported_ros_package_is_declared():
    found = {m: files for m, files in imports(package_files()).items() if is_ros(m)}
    # The scan must see the node's own ROS imports, or it proves nothing.
    assert {"rclpy", "std_msgs", "geometry_msgs", "launch", "launch_ros"} <= set(found)
    run = set(declared().get("exec_depend", [])) | set(declared().get("depend", []))
    missing = {m: sorted(files) for m, files in found.items() if m not in run}
    assert not missing, f"imported but not <exec_depend> in package.xml: {missing}"


def test_run_time_third_party_imports_have_an_install_path():
    """Each non-ROS import of ros/, core/, backends/, model/ is installed by rosdep or pip."""
    files = [p for sub in RUN_TIME for p in sorted((PACKAGE / sub).rglob("*.py"))]
    assert files
    robot = requirement_names(ROOT / "requirements-robot.txt")
    exec_deps = set(declared().get("exec_depend", []))
    stdlib = set(sys.stdlib_module_names) | {"mobile_vla_node"}
    for module, where in sorted(imports(files).items()):
        if module in stdlib or is_ros(module) or module in JETPACK | OPTIONAL:
            continue
        assert module in THIRD_PARTY, f"run-time import {module} ({sorted(where)}) is unmapped"
        source = THIRD_PARTY[module]
        assert source in exec_deps or source in robot, (
            f"{module} ({sorted(where)}): {source} is neither in package.xml nor in "
            "requirements-robot.txt")


def test_robot_requirements_keep_jetpack_and_tool_packages_out():
    robot = requirement_names(ROOT / "requirements-robot.txt")
    tools = requirement_names(ROOT / "requirements-tools.txt")
    assert not robot & {"torch", "tensorrt", "onnxruntime", "onnxruntime-gpu"}
    assert not robot & {"rosbags", "h5py", "matplotlib", "psutil"}
    assert {"rosbags", "h5py", "matplotlib"} <= tools
