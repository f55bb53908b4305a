"""The robot's run-time closure: a node with an ONNX backend imports no torch and no build code.

Each check runs in a fresh interpreter (this test process has torch loaded already) and looks at
``sys.modules`` after the node module is imported and an ONNX backend, built from a freshly
exported tiny model, has loaded and run one step.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

BUILD_TIME = ("mobile_vla_node.export", "mobile_vla_node.replay", "mobile_vla_node.bench",
              "mobile_vla_node.demo", "mobile_vla_node.stress", "mobile_vla_node.sim")

CHILD = """
import json, sys
import numpy as np
import mobile_vla_node.ros.node
import mobile_vla_node.backends.tensorrt_backend
from mobile_vla_node.backends import create_backend
from mobile_vla_node.core.config import BackendConfig

backend = create_backend(BackendConfig(backend="onnx", model_path=sys.argv[1]))
backend.load()
ids = backend.tokenizer.encode("go to the red box")
size = backend.spec.image_size
feature = backend.encode(np.zeros((size, size, 3), np.uint8), ids)
actions = backend.decode(feature[None])
backend.close()
print(json.dumps({"modules": sorted(sys.modules), "actions": np.asarray(actions).tolist()}))
"""


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    from mobile_vla_node.export import cli

    path = tmp_path_factory.mktemp("runtime_imports") / "tiny.onnx"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = cli.main(["onnx", "--preset", "tiny", "--output", str(path), "--parity-cases", "1"])
    assert rc == 0, out.getvalue()
    return path


def child_modules(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_onnx_node_imports_no_torch_and_no_build_code(onnx_path):
    result = child_modules(CHILD, str(onnx_path))
    modules = result["modules"]
    assert "mobile_vla_node.ros.node" in modules and "onnxruntime" in modules
    assert len(result["actions"][0]) == 3  # the backend really ran a step
    assert "torch" not in modules, [m for m in modules if m.startswith("torch")][:5]
    assert not [m for m in modules if m.startswith(BUILD_TIME)]
    for heavy in ("rosbags", "h5py", "matplotlib", "transformers", "tensorrt"):
        assert heavy not in modules, heavy


def test_the_check_sees_torch_when_it_is_imported(onnx_path):
    """The same check fails when the child does import torch (it is not vacuous)."""
    modules = child_modules(CHILD.replace("import numpy as np", "import numpy as np, torch"),
                            str(onnx_path))["modules"]
    assert "torch" in modules
