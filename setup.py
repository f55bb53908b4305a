"""ament_python package setup for mobile_vla_node (colcon on the robot, pip in a venv)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "mobile_vla_node"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={f"{PACKAGE}.model": ["demo_policy/*", "sim_policy/*"],
                  f"{PACKAGE}.sim": ["scenes/*.xml", "suites/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="mobile_vla_node maintainers",
    maintainer_email="maintainers@example.com",
    description="ROS 2 inference node for RoboVLMs-style VLA policies (PyTorch/ONNX/TensorRT)",
    license="Apache-2.0",
    extras_require={"test": ["pytest"]},
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            f"vla_node = {PACKAGE}.ros.main:main",
            f"vla_demo = {PACKAGE}.demo.cli:main",
            f"vla_export = {PACKAGE}.export.cli:main",
            f"vla_checkpoint = {PACKAGE}.export.checkpoint_cli:main",
            f"vla_replay = {PACKAGE}.replay.cli:main",
            f"vla_bench = {PACKAGE}.bench.cli:main",
            f"vla_stress = {PACKAGE}.stress.cli:main",
            f"vla_sim = {PACKAGE}.sim.cli:main",
        ],
    },
)
