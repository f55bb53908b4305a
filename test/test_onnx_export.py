"""`vla_export onnx` / `verify`: tiny-preset export, metadata, parity, broken files, errors."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from mobile_vla_node.backends.onnx_format import read_export_metadata
from mobile_vla_node.export import cli
from mobile_vla_node.export.parity import ParityResult, format_report

META_KEYS = ("format", "role", "model_spec", "policy_config", "tokenizer", "normalization",
             "export", "parity")


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def figures(stdout: str) -> dict:
    found = {}
    for name, max_abs, mean_abs, cosine in re.findall(
            r"parity (\w+): max_abs=(\S+) mean_abs=(\S+) cosine=(\S+)", stdout):
        found[name] = (float(max_abs), float(mean_abs), float(cosine))
    return found


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    rc, out, err = run_cli(["onnx", "--preset", "tiny", "--output", path, "--parity-cases", "4"])
    return path, rc, out, err


@pytest.fixture(scope="module")
def reference():
    return cli.load_reference("tiny", "", "")


def test_export_passes_parity_and_prints_figures(export):
    path, rc, out, err = export
    assert rc == 0, out + err
    assert path.is_file() and path.with_name("tiny.step.onnx").is_file()
    figs = figures(out)
    assert set(figs) == {"feature", "actions"}
    for max_abs, mean_abs, cosine in figs.values():
        assert 0.0 <= mean_abs <= max_abs <= 1e-4
        assert cosine > 0.99999
    for phase in ("loading policy", "exporting encoder", "exporting step", "onnx.checker",
                  "parity vs PyTorch"):
        assert re.search(rf"\]\s+{phase}.*done in \d+\.\d+ s", out), phase


def test_checker_opset_and_metadata(export, reference):
    path = export[0]
    step = path.with_name("tiny.step.onnx")
    for file, role in ((path, "encoder"), (step, "step")):
        onnx.checker.check_model(str(file), full_check=True)
        model = onnx.load(str(file))
        opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0]
        assert opset >= 17
        props = {p.key: p.value for p in model.metadata_props}
        for key in META_KEYS:
            assert f"mobile_vla.{key}" in props, key
        assert props["mobile_vla.role"] == role
    meta = read_export_metadata(path)
    assert meta["step_file"] == "tiny.step.onnx"
    assert meta["format"] == "1"
    assert meta["model_spec"] == {k: getattr(reference.spec, k)
                                  for k in meta["model_spec"]}
    assert meta["policy_config"]["preset"] == "tiny"
    assert meta["export"]["opset"] == 17 and meta["export"]["fp16"] is False
    assert meta["export"]["tolerances"]["atol"] == 1e-4
    assert meta["parity"]["passed"] is True
    assert meta["parity"]["outputs"]["feature"]["max_abs"] <= 1e-4
    assert len(meta["normalization"]["mean"]) == 3 and len(meta["normalization"]["std"]) == 3
    assert "channel_order_note" in meta["normalization"]
    assert meta["tokenizer"]["template"] == reference.tokenizer.template


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_io_signature(export, reference):
    path = export[0]
    spec = reference.spec
    enc = onnx.load(str(path), load_external_data=False).graph
    step = onnx.load(str(path.with_name("tiny.step.onnx"))).graph
    io = {v.name: (v.type.tensor_type.elem_type, _dims(v))
          for v in [*enc.input, *enc.output, *step.input, *step.output]}
    s, d = spec.image_size, spec.feature_dim
    state = [reference.model.config.lstm_layers, 1, reference.model.config.lstm_hidden]
    assert io == {
        "image": (TensorProto.UINT8, [1, s, s, 3]),
        "text_ids": (TensorProto.INT64, [1, "text_len"]),
        "feature": (TensorProto.FLOAT, [1, d]),
        "features": (TensorProto.FLOAT, [1, "window", d]),
        "h0": (TensorProto.FLOAT, state), "c0": (TensorProto.FLOAT, state),
        "actions": (TensorProto.FLOAT, [1, spec.chunk, spec.action_dim]),
        "hn": (TensorProto.FLOAT, state), "cn": (TensorProto.FLOAT, state),
    }


def test_dynamic_window_and_text_len(export, reference):
    path = export[0]
    model = reference.model
    step = ort.InferenceSession(str(path.with_name("tiny.step.onnx")),
                                providers=["CPUExecutionProvider"])
    enc = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    h0, c0 = model.zero_state(1)
    for t in range(1, reference.spec.window_size + 1):
        feats = rng.standard_normal((1, t, reference.spec.feature_dim)).astype(np.float32)
        actions, hn, cn = step.run(None, {"features": feats, "h0": h0.numpy(), "c0": c0.numpy()})
        with torch.no_grad():
            ref = model.decode(torch.from_numpy(feats), h0, c0)
        for got, want in zip((actions, hn, cn), ref, strict=True):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
    size = reference.spec.image_size
    image = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    for command in ("stop", "go to the red box and then turn left towards the door"):
        ids = reference.tokenizer.encode(command)[None]
        (feature,) = enc.run(None, {"image": image, "text_ids": ids})
        with torch.no_grad():
            want = model.encode_frame(torch.from_numpy(image), torch.from_numpy(ids)).numpy()
        np.testing.assert_allclose(feature, want, atol=1e-4, rtol=0)


def test_fp16_export_passes_its_tolerance(tmp_path):
    path = tmp_path / "tiny16.onnx"
    rc, out, err = run_cli(["onnx", "--preset", "tiny", "--output", path, "--fp16",
                            "--parity-cases", "3"])
    assert rc == 0, out + err
    assert "fp16 conversion: done in" in out
    figs = figures(out)
    assert set(figs) == {"feature", "actions"}
    assert all(max_abs <= 1e-2 for max_abs, _, _ in figs.values())
    assert "atol=0.01" in out
    meta = read_export_metadata(path)
    assert meta["export"]["fp16"] is True and meta["export"]["tolerances"]["atol"] == 1e-2
    for file in (path, tmp_path / "tiny16.step.onnx"):
        model = onnx.load(str(file))
        types_ = {t.data_type for t in model.graph.initializer}
        assert TensorProto.FLOAT16 in types_
        io_types = {v.type.tensor_type.elem_type for v in [*model.graph.input,
                                                            *model.graph.output]}
        assert io_types <= {TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT64}


def test_large_model_path_uses_external_data(tmp_path, monkeypatch):
    # The >2 GiB path (weights in NAME.onnx.data, file-based fp16 shape inference), forced by a
    # tiny threshold.
    from mobile_vla_node.export import onnx as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1000)
    path = tmp_path / "big.onnx"
    rc, out, err = run_cli(["onnx", "--preset", "tiny", "--output", path, "--fp16",
                            "--parity-cases", "2"])
    assert rc == 0, out + err
    for name in ("big.onnx.data", "big.step.onnx.data"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert path.stat().st_size < 200_000
    meta = read_export_metadata(path)
    assert meta["export"]["external_data"] is True and meta["parity"]["passed"] is True
    rc, out, err = run_cli(["verify", "--onnx", path, "--preset", "tiny", "--parity-cases", "1"])
    assert rc == 0, out + err


def _copy_export(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir()
    for name in (src.name, src.name.replace(".onnx", ".step.onnx")):
        shutil.copy(src.with_name(name), dst_dir / name)
    return dst_dir / src.name


def _perturb(file: Path, scale: float) -> str:
    """Add noise to the largest float initializer; returns its name."""
    model = onnx.load(str(file))
    init = max((t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT),
               key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(init)
    noisy = values + np.random.default_rng(0).standard_normal(values.shape).astype(
        np.float32) * scale
    init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    onnx.save(model, str(file))
    return init.name


def test_verify_accepts_intact_export(export):
    rc, out, err = run_cli(["verify", "--onnx", export[0], "--preset", "tiny",
                            "--parity-cases", "3"])
    assert rc == 0, out + err
    assert set(figures(out)) == {"feature", "actions"}


def test_verify_with_frames_from_an_image_folder(export, tmp_path):
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (48, 64, 3), np.uint8))
    rc, out, err = run_cli(["verify", "--onnx", export[0], "--preset", "tiny", "--frames",
                            folder, "--parity-cases", "2"])
    assert rc == 0, out + err
    assert "4 cases: 2 random, 2 frames from" in out


@pytest.mark.parametrize("part", ["encoder", "step"])
def test_verify_catches_perturbed_weights(export, tmp_path, part):
    path = _copy_export(export[0], tmp_path / "broken")
    target = path if part == "encoder" else path.with_name("tiny.step.onnx")
    _perturb(target, 0.05)
    rc, out, err = run_cli(["verify", "--onnx", path, "--preset", "tiny", "--parity-cases", "2"])
    assert rc == 3, out + err
    assert "FAIL" in out and "parity FAILED" in err


def test_error_missing_checkpoint(tmp_path):
    missing = tmp_path / "nope.ckpt"
    rc, out, err = run_cli(["onnx", "--checkpoint", missing, "--output", tmp_path / "x.onnx"])
    assert rc == 2
    assert f"checkpoint {str(missing)!r} does not exist" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_error_unknown_preset_lists_known(tmp_path):
    rc, out, err = run_cli(["onnx", "--preset", "huge", "--output", tmp_path / "x.onnx"])
    assert rc == 2
    assert "unknown preset 'huge'" in err and "tiny" in err and "mobile-vla-kosmos2" in err


def test_error_unwritable_output(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    rc, out, err = run_cli(["onnx", "--preset", "tiny", "--output", blocker / "sub" / "m.onnx"])
    assert rc == 2
    assert "is not writable" in err and "m.onnx" in err


def test_error_bad_output_name_and_opset(tmp_path):
    rc, _, err = run_cli(["onnx", "--preset", "tiny", "--output", tmp_path / "m.bin"])
    assert rc == 2 and "must be DIR/NAME.onnx" in err
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()) as buf:
        cli.main(["onnx", "--preset", "tiny", "--output", str(tmp_path / "m.onnx"),
                  "--opset", "13"])
    assert exc.value.code == 2 and "opset 13" in buf.getvalue()


def test_console_error_is_one_line_without_traceback(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "mobile_vla_node.export.cli", "onnx",
                           "--preset", "tiny", "--output", str(blocker / "x.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "is not writable" in proc.stderr and "Traceback" not in proc.stderr


def test_tensorrt_subcommand_missing_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "mobile_vla_node.export.tensorrt", None)
    rc, out, err = run_cli(["tensorrt", "--onnx", "x.onnx"])
    assert rc == 2 and "tensorrt subcommand" in err


def test_tensorrt_subcommand_broken_module(monkeypatch):
    broken = types.ModuleType("mobile_vla_node.export.tensorrt")

    def add_arguments(parser):
        raise RuntimeError("boom")

    broken.add_arguments = add_arguments
    monkeypatch.setitem(sys.modules, "mobile_vla_node.export.tensorrt", broken)
    rc, out, err = run_cli(["tensorrt"])
    assert rc == 2 and "failed to load" in err and "boom" in err


def test_tensorrt_subcommand_dispatch(monkeypatch):
    fake = types.ModuleType("mobile_vla_node.export.tensorrt")
    seen = {}

    def add_arguments(parser):
        parser.add_argument("--onnx", required=True)

    def run(args):
        seen["onnx"] = args.onnx
        return 0

    fake.add_arguments, fake.run = add_arguments, run
    monkeypatch.setitem(sys.modules, "mobile_vla_node.export.tensorrt", fake)
    assert run_cli(["tensorrt", "--onnx", "m.onnx"])[0] == 0
    assert seen == {"onnx": "m.onnx"}


def test_format_report_names_worst_output():
    results = [ParityResult("feature", 2e-5, 1e-6, 0.99999, 1e-4, True),
               ParityResult("actions", 3e-4, 1e-4, 0.999, 1e-4, False)]
    text = format_report(results)
    assert "worst: actions" in text and "FAILED" in text
    assert text.count("PASS") == 1 and text.count("FAIL") >= 2
    assert json.dumps(results[0].as_dict())
