"""TensorRT engine building and backend.

CPU tests cover everything that needs neither TensorRT nor CUDA: manifests and every mismatch
kind, precision/profile validation, the clear errors without TensorRT / cuda-python / a GPU, the
rebuild command, build progress, and int8 calibration batching over a real rosbag2 bag. The GPU
tests at the end build a tiny engine and run it; they are skipped without TensorRT + CUDA.
"""

from __future__ import annotations

import argparse
import ctypes
import enum
import hashlib
import importlib.util
import json
import logging
import shlex
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from mobile_vla_node.backends import create_backend
from mobile_vla_node.backends import tensorrt_backend as trb
from mobile_vla_node.backends import trt_manifest as tm
from mobile_vla_node.backends.base import BackendError
from mobile_vla_node.backends.tensorrt_backend import (
    CudaRuntime,
    TensorRTBackend,
    engine_problems,
    mismatch_message,
)
from mobile_vla_node.core.config import BackendConfig
from mobile_vla_node.export import calibration
from mobile_vla_node.export import tensorrt as trt_build
from mobile_vla_node.export.parity import default_atol
from mobile_vla_node.model.presets import preset_config
from mobile_vla_node.model.tokenizer import PromptTokenizer, builtin_tokenizer

TINY_SPEC = {"preset": "tiny", "image_size": 224, "feature_dim": 64, "window_size": 4,
             "chunk": 1, "action_dim": 3, "max_linear": 0.5, "chunk_step_period_s": 0.1}
FACTS = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}


def tokenizer_json() -> str:
    return PromptTokenizer(builtin_tokenizer(), "An image of a robot {instruction}").to_json()


def make_engine_dir(folder: Path, precision: str = "fp16", build_args: dict | None = None,
                    facts: dict | None = None) -> tuple[Path, tm.EngineManifest]:
    """Fake ONNX + engine files and a saved manifest, as `vla_export tensorrt` leaves them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.onnx").write_bytes(b"encoder graph")
    (folder / "policy.step.onnx").write_bytes(b"step graph")
    engine = folder / "policy.engine"
    engine.write_bytes(b"E" * 100)
    tm.step_engine_path(engine).write_bytes(b"S" * 10)
    profiles = tm.make_profiles(TINY_SPEC, preset_config("tiny").to_dict())
    args = {"output": str(engine), "workspace_mb": 2048, "timing_cache": None}
    args.update(build_args or {})
    manifest = tm.create_manifest(
        facts=facts or FACTS, precision=precision, engine=engine,
        encoder_onnx=folder / "policy.onnx", step_onnx=folder / "policy.step.onnx",
        profiles=profiles, workspace_mb=2048, build_time_s=12.5,
        builder_flags={"encoder": ["FP16"], "step": ["FP16"]},
        metadata={"model_spec": TINY_SPEC, "tokenizer": tokenizer_json(),
                  "normalization": {"mean": [0.5] * 3}, "export": {"opset": 17}},
        step_precision="fp16" if precision == "int8" else precision, build_args=args)
    manifest.save(tm.manifest_path(engine))
    return engine, manifest


# ----------------------------------------------------------------------------- manifest


def test_paths():
    assert tm.step_engine_path("/a/m.engine") == Path("/a/m.step.engine")
    assert tm.manifest_path("/a/m.engine") == Path("/a/m.engine.json")
    assert tm.default_calib_cache("/a/m.engine") == Path("/a/m.calib.cache")
    assert tm.default_timing_cache("/a/m.engine") == Path("/a/trt_timing.cache")
    with pytest.raises(tm.ManifestError, match="'/a/m.onnx' must end in .engine"):
        tm.step_engine_path("/a/m.onnx")


def test_manifest_save_load_roundtrip(tmp_path):
    engine, manifest = make_engine_dir(tmp_path)
    path = tm.manifest_path(engine)
    assert path.is_file() and not path.with_name(path.name + ".tmp").exists()
    loaded = tm.EngineManifest.load(path)
    assert loaded == manifest
    assert loaded.encoder_onnx_sha256 == hashlib.sha256(b"encoder graph").hexdigest()
    assert loaded.step_onnx_sha256 == hashlib.sha256(b"step graph").hexdigest()
    assert loaded.engine_bytes == {"encoder": 100, "step": 10}
    assert loaded.encoder_engine == "policy.engine"
    assert loaded.step_engine == "policy.step.engine"
    assert loaded.profiles["encoder"]["text_ids"] == {"min": [1, 1], "opt": [1, 24],
                                                      "max": [1, 64]}
    assert loaded.created_at and loaded.format == tm.MANIFEST_FORMAT
    PromptTokenizer.from_json(loaded.tokenizer)  # the engine folder is self-contained
    assert json.loads(path.read_text())["gpu_name"] == "Orin"


def test_manifest_load_errors(tmp_path):
    with pytest.raises(tm.ManifestError, match="does not exist"):
        tm.EngineManifest.load(tmp_path / "none.engine.json")
    bad = tmp_path / "bad.engine.json"
    bad.write_text("{not json")
    with pytest.raises(tm.ManifestError, match="not valid JSON"):
        tm.EngineManifest.load(bad)
    engine, _ = make_engine_dir(tmp_path / "m")
    data = json.loads(tm.manifest_path(engine).read_text())
    del data["gpu_name"], data["tokenizer"]
    data["some_future_key"] = 1  # ignored
    bad.write_text(json.dumps(data))
    with pytest.raises(tm.ManifestError, match=r"lacks \['gpu_name', 'tokenizer'\]"):
        tm.EngineManifest.load(bad)


def test_onnx_digest_covers_external_data(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph")
    alone = tm.onnx_digest(onnx)
    assert alone == hashlib.sha256(b"graph").hexdigest()
    tm.onnx_data_file(onnx).write_bytes(b"weights")
    with_data = tm.onnx_digest(onnx)
    tm.onnx_data_file(onnx).write_bytes(b"other weights")
    assert len({alone, with_data, tm.onnx_digest(onnx)}) == 3


def test_check_manifest_matches(tmp_path):
    engine, manifest = make_engine_dir(tmp_path)
    onnx = {"encoder": tmp_path / "policy.onnx", "step": tmp_path / "policy.step.onnx"}
    assert tm.check_manifest(manifest, FACTS, onnx, engine=engine) == []
    assert tm.check_engine_files(manifest, engine) == []


def expected_command(engine: Path, folder: Path, precision="fp16") -> str:
    return shlex.join(["vla_export", "tensorrt", "--onnx", str(folder / "policy.onnx"),
                       "--output", str(engine), "--precision", precision,
                       "--workspace-mb", "2048"])


@pytest.mark.parametrize("key,value,label", [
    ("tensorrt_version", "10.7.0", "TensorRT version"),
    ("gpu_name", "NVIDIA GeForce RTX 4090", "GPU"),
    ("compute_capability", "8.9", "compute capability"),
])
def test_check_manifest_each_runtime_mismatch(tmp_path, key, value, label):
    engine, manifest = make_engine_dir(tmp_path)
    problems = tm.check_manifest(manifest, dict(FACTS, **{key: value}), engine=engine)
    assert len(problems) == 1
    assert problems[0].startswith(f"{label} differs")
    assert repr(FACTS[key]) in problems[0] and repr(value) in problems[0]
    assert problems[0].endswith("rebuild with: " + expected_command(engine, tmp_path))


def test_check_manifest_onnx_changed_or_missing(tmp_path):
    engine, manifest = make_engine_dir(tmp_path)
    (tmp_path / "policy.step.onnx").write_bytes(b"re-exported step graph")
    problems = tm.check_manifest(manifest, FACTS, {"encoder": tmp_path / "policy.onnx",
                                                   "step": tmp_path / "policy.step.onnx"})
    assert len(problems) == 1
    assert "step ONNX" in problems[0] and "changed since the engine was built" in problems[0]
    assert "rebuild with: vla_export tensorrt --onnx" in problems[0]
    problems = tm.check_manifest(manifest, FACTS, {"encoder": tmp_path / "gone.onnx"})
    assert len(problems) == 1 and "does not exist" in problems[0]
    with pytest.raises(tm.ManifestError, match="role 'decoder'"):
        tm.check_manifest(manifest, FACTS, {"decoder": tmp_path / "policy.onnx"})


def test_check_manifest_reports_every_mismatch(tmp_path):
    engine, manifest = make_engine_dir(tmp_path)
    (tmp_path / "policy.onnx").write_bytes(b"new encoder")
    (tmp_path / "policy.step.onnx").write_bytes(b"new step")
    other = {"tensorrt_version": "8.6.2", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}
    problems = tm.check_manifest(manifest, other, tm.onnx_beside(manifest, engine))
    assert len(problems) == 5
    assert all("rebuild with: vla_export tensorrt" in p for p in problems)
    manifest.format = tm.MANIFEST_FORMAT + 1
    assert "newer" in tm.check_manifest(manifest, FACTS)[0]


def test_check_engine_files(tmp_path):
    engine, manifest = make_engine_dir(tmp_path)
    engine.write_bytes(b"E" * 99)
    tm.step_engine_path(engine).unlink()
    problems = tm.check_engine_files(manifest, engine)
    assert len(problems) == 2
    assert "has 99 bytes but the manifest records 100" in problems[0]
    assert "step engine" in problems[1] and "is missing" in problems[1]
    assert all("rebuild with: vla_export tensorrt" in p for p in problems)


def test_rebuild_command_exact_and_quoted(tmp_path):
    folder = tmp_path / "my models"
    engine, manifest = make_engine_dir(
        folder, precision="int8",
        build_args={"calib": "/data/bag one", "calib_cache": "/c/m.calib.cache",
                    "calib_batches": 32, "timing_cache": "/c/trt_timing.cache",
                    "max_text_len": 48, "atol": 0.08})
    command = tm.rebuild_command(manifest, engine)
    assert shlex.split(command) == [
        "vla_export", "tensorrt", "--onnx", str(folder / "policy.onnx"), "--output", str(engine),
        "--precision", "int8", "--calib", "/data/bag one", "--calib-cache", "/c/m.calib.cache",
        "--calib-batches", "32", "--workspace-mb", "2048", "--timing-cache",
        "/c/trt_timing.cache", "--max-text-len", "48", "--atol", "0.08"]
    # Moved folder without the ONNX: the recorded (absolute) ONNX path is used.
    moved = tmp_path / "elsewhere" / "policy.engine"
    assert f"--onnx {shlex.quote(manifest.encoder_onnx)}" in tm.rebuild_command(manifest, moved)


def test_normalize_metadata():
    raw = {"mobile_vla.format": "1", "mobile_vla.role": "encoder",
           "mobile_vla.model_spec": json.dumps(TINY_SPEC),
           "mobile_vla.tokenizer": tokenizer_json(), "mobile_vla.export": '{"opset": 17}',
           "other": "kept"}
    meta = tm.normalize_metadata(raw)
    assert meta["model_spec"] == TINY_SPEC and meta["export"] == {"opset": 17}
    assert isinstance(meta["tokenizer"], str) and meta["role"] == "encoder"
    parsed = tm.normalize_metadata({"model_spec": TINY_SPEC,
                                    "tokenizer": json.loads(tokenizer_json())})
    PromptTokenizer.from_json(parsed["tokenizer"])
    with pytest.raises(tm.ManifestError, match="lacks mobile_vla.model_spec"):
        tm.normalize_metadata({"mobile_vla.tokenizer": "{}"})
    with pytest.raises(tm.ManifestError, match="'mobile_vla.export' is not valid JSON"):
        tm.normalize_metadata(dict(raw, **{"mobile_vla.export": "{"}))


# ----------------------------------------------------------------------------- validation


def test_validate_precision(tmp_path):
    for ok in ("fp32", "fp16"):
        tm.validate_precision(ok)
    with pytest.raises(tm.ManifestError, match=r"precision 'bf16' is not supported.*fp32"):
        tm.validate_precision("bf16")
    with pytest.raises(tm.ManifestError, match="int8' needs calibration data: pass --calib"):
        tm.validate_precision("int8")
    cache = tmp_path / "m.calib.cache"
    with pytest.raises(tm.ManifestError, match=f"{cache}' does not exist"):
        tm.validate_precision("int8", calib_cache=cache)
    cache.write_bytes(b"table")
    tm.validate_precision("int8", calib_cache=cache)
    tm.validate_precision("int8", calib=tmp_path)
    with pytest.raises(tm.ManifestError, match="--calib '/no/bag' does not exist"):
        tm.validate_precision("int8", calib="/no/bag")


def test_make_profiles_tiny():
    policy = preset_config("tiny").to_dict()
    p = tm.make_profiles(TINY_SPEC, policy)
    assert p["encoder"]["image"] == tm.shape_range((1, 224, 224, 3), (1, 224, 224, 3),
                                                   (1, 224, 224, 3))
    assert p["step"]["features"] == {"min": [1, 1, 64], "opt": [1, 4, 64], "max": [1, 4, 64]}
    assert p["step"]["h0"]["max"] == [2, 1, 64] == p["step"]["c0"]["min"]
    assert tm.make_profiles(TINY_SPEC, policy, 16)["encoder"]["text_ids"]["opt"] == [1, 16]
    padded = dict(policy, pad_to=40)
    assert tm.make_profiles(TINY_SPEC, padded)["encoder"]["text_ids"] == tm.shape_range(
        (1, 40), (1, 40), (1, 40))
    with pytest.raises(tm.ManifestError, match="--max-text-len 64 differs from the model's "
                                               "pad_to=40"):
        tm.make_profiles(TINY_SPEC, padded, 64)
    with pytest.raises(tm.ManifestError, match="--max-text-len 0 must be >= 1"):
        tm.make_profiles(TINY_SPEC, policy, 0)


def test_validate_profiles_errors():
    policy = preset_config("tiny").to_dict()
    good = tm.make_profiles(TINY_SPEC, policy)
    tm.validate_profiles(good, 4, text_limit=108)
    bad = json.loads(json.dumps(good))
    bad["encoder"]["text_ids"] = {"min": [1, 30], "opt": [1, 24], "max": [1, 200]}
    bad["step"]["features"] = {"min": [1, 1, 64], "opt": [1, 6, 64], "max": [1, 6, 64]}
    bad["step"]["h0"] = {"min": [2, 1], "opt": [2, 1, 64], "max": [2, 1, 64]}
    with pytest.raises(tm.ManifestError) as err:
        tm.validate_profiles(bad, 4, text_limit=108)
    text = str(err.value)
    assert "encoder input 'text_ids' axis 1: min=30 opt=24 max=200 violates" in text
    assert "window max=6 exceeds the model's window_size=4" in text
    assert "text_len max=200 exceeds the model's prompt limit of 108" in text
    assert "'h0': min [2, 1], opt [2, 1, 64], max [2, 1, 64] differ in rank" in text
    zero = json.loads(json.dumps(good))
    zero["step"]["features"]["min"] = [1, 0, 64]
    with pytest.raises(tm.ManifestError, match=r"min \[1, 0, 64\] has a dimension below 1"):
        tm.validate_profiles(zero, 4)


def test_text_len_limit():
    policy = preset_config("tiny").to_dict()
    assert tm.text_len_limit(policy) == 128 - 16 - 4  # positions - image tokens - fixed
    assert tm.text_len_limit(policy, export={"max_text_len": 50}) == 50
    tok = json.dumps({"max_tokens": 20})
    assert tm.text_len_limit(policy, tok) == 20
    assert tm.text_len_limit({}) is None


def test_build_options(tmp_path):
    with pytest.raises(tm.ManifestError, match="m.onnx' does not exist; export it with "
                                               "vla_export onnx"):
        trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None)
    (tmp_path / "m.onnx").write_bytes(b"graph")
    opts = trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None, precision="fp32")
    assert opts.output == tmp_path / "m.engine"
    assert opts.timing_cache == tmp_path / "trt_timing.cache" and opts.tolerance == 1e-3
    assert trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None).tolerance == 1e-2
    with pytest.raises(tm.ManifestError, match="'x.plan' must end in .engine"):
        trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=Path("x.plan"))
    with pytest.raises(tm.ManifestError, match="m.calib.cache' does not exist"):
        trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None, precision="int8")
    with pytest.raises(tm.ManifestError, match="--calib-batches 0 must be >= 1"):
        trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None, calib_batches=0)
    with pytest.raises(tm.ManifestError, match="--atol -1.0 must be > 0"):
        trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None, atol=-1.0)
    opts = trt_build.BuildOptions(onnx=tmp_path / "m.onnx", output=None, precision="int8",
                                  calib=str(tmp_path), atol=0.2)
    assert opts.calib_cache == tmp_path / "m.calib.cache" and opts.tolerance == 0.2
    assert opts.build_args()["calib"] == str(tmp_path.resolve())


# ----------------------------------------------------------------------------- missing runtime


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    trt_build.add_arguments(parser)
    return parser.parse_args(argv)


def hide_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def hide_cuda_python(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)


def fake_tensorrt(monkeypatch, version="10.7.0"):
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    monkeypatch.setitem(sys.modules, "tensorrt", module)


class CudaErr(enum.Enum):
    cudaSuccess = 0
    cudaErrorNoDevice = 100


def fake_cudart(monkeypatch, devices=1, name=b"NVIDIA H100 80GB HBM3\0\0", cc=(9, 0)):
    """A cuda-python runtime module that answers the start-up queries (no GPU behind it)."""
    ok = CudaErr.cudaSuccess
    props = types.SimpleNamespace(name=name, major=cc[0], minor=cc[1])
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = CudaErr
    rt.cudaGetDeviceCount = lambda: (ok, devices) if devices else (
        CudaErr.cudaErrorNoDevice, 0)
    rt.cudaGetErrorName = lambda err: (ok, err.name.encode())
    rt.cudaGetErrorString = lambda err: (ok, b"no CUDA-capable device is detected")
    rt.cudaSetDevice = lambda index: (ok,)
    rt.cudaGetDeviceProperties = lambda index: (ok, props)
    for mod in ("cuda", "cuda.bindings"):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    return rt


def assert_one_line(text: str, *needles: str) -> None:
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text
    for needle in needles:
        assert needle in text, text


def onnx_file(folder: Path) -> str:
    (folder / "m.onnx").write_bytes(b"graph")
    return str(folder / "m.onnx")


def test_cli_without_tensorrt_exits_2(monkeypatch, capsys, tmp_path):
    hide_tensorrt(monkeypatch)
    code = trt_build.run(parse(["--onnx", onnx_file(tmp_path), "--precision", "fp16"]))
    assert code == trt_build.EXIT_UNAVAILABLE == 2
    captured = capsys.readouterr()
    assert_one_line(captured.err, "TensorRT is not available", "python3-libnvinfer",
                    "pip install tensorrt")
    assert captured.out == ""


def test_cli_without_cuda_python_exits_2(monkeypatch, capsys, tmp_path):
    fake_tensorrt(monkeypatch)
    hide_cuda_python(monkeypatch)
    assert trt_build.main(["--onnx", onnx_file(tmp_path)]) == 2
    assert_one_line(capsys.readouterr().err, "cuda-python is not available",
                    "pip install cuda-python")


def test_cli_without_cuda_device_exits_2(monkeypatch, capsys, tmp_path):
    fake_tensorrt(monkeypatch)
    fake_cudart(monkeypatch, devices=0)
    assert trt_build.main(["--onnx", onnx_file(tmp_path)]) == 2
    assert_one_line(capsys.readouterr().err, "no CUDA device (cudaErrorNoDevice")


def test_cli_bad_arguments_exit_2(capsys, tmp_path):
    assert trt_build.main(["--onnx", str(tmp_path / "m.onnx")]) == 2
    assert_one_line(capsys.readouterr().err, "m.onnx' does not exist")
    assert trt_build.main(["--onnx", onnx_file(tmp_path), "--precision", "int8"]) == 2
    assert_one_line(capsys.readouterr().err, "needs calibration data", "--calib")
    with pytest.raises(SystemExit) as exc:
        trt_build.main(["--onnx", "m.onnx", "--precision", "bf16"])
    assert exc.value.code == 2


def test_vla_export_tensorrt_without_tensorrt(monkeypatch, capsys, tmp_path):
    export = pytest.importorskip("mobile_vla_node.export.cli")
    hide_tensorrt(monkeypatch)
    assert export.main(["tensorrt", "--onnx", onnx_file(tmp_path)]) == 2
    assert_one_line(capsys.readouterr().err, "python3-libnvinfer", "pip install tensorrt")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="tensorrt is installed here; this checks the real missing-package path")
def test_cli_subprocess_without_tensorrt_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mobile_vla_node.export.tensorrt", "--onnx",
                           onnx_file(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert_one_line(proc.stderr, "pip install tensorrt")


def test_backend_without_tensorrt(monkeypatch, tmp_path):
    hide_tensorrt(monkeypatch)
    backend = create_backend(BackendConfig(backend="tensorrt",
                                           model_path=str(tmp_path / "m.engine")))
    assert isinstance(backend, TensorRTBackend) and backend.name == "tensorrt"
    with pytest.raises(BackendError) as err:
        backend.load()
    assert_one_line(str(err.value), "TensorRT is not available", "python3-libnvinfer",
                    "pip install tensorrt")
    backend.close()  # closing a backend that never loaded is fine


def test_backend_without_cuda_python_or_device(monkeypatch, tmp_path):
    fake_tensorrt(monkeypatch)
    hide_cuda_python(monkeypatch)
    cfg = BackendConfig(backend="tensorrt", model_path=str(tmp_path / "m.engine"))
    with pytest.raises(BackendError) as err:
        TensorRTBackend(cfg).load()
    assert_one_line(str(err.value), "cuda-python is not available", "pip install cuda-python")
    fake_cudart(monkeypatch, devices=0)
    with pytest.raises(BackendError) as err:
        TensorRTBackend(cfg).load()
    assert_one_line(str(err.value), "no CUDA device", "cudaErrorNoDevice")


def test_backend_model_path_errors(tmp_path):
    with pytest.raises(BackendError, match="needs model_path"):
        TensorRTBackend(BackendConfig(backend="tensorrt")).load()
    with pytest.raises(BackendError, match=r"is not a \.engine file.*--onnx MODEL.onnx"):
        TensorRTBackend(BackendConfig(backend="tensorrt",
                                      model_path=str(tmp_path / "m.onnx"))).load()


def test_cuda_runtime_facts_from_fake(monkeypatch):
    rt = fake_cudart(monkeypatch)
    cuda = CudaRuntime(rt, 0)
    assert cuda.facts() == {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    with pytest.raises(BackendError, match="CUDA device 3 does not exist"):
        CudaRuntime(rt, 3)


def test_backend_mismatched_engine_names_rebuild_command(monkeypatch, tmp_path):
    engine, manifest = make_engine_dir(tmp_path)
    fake_tensorrt(monkeypatch, "10.7.0")
    fake_cudart(monkeypatch)  # an H100 with TensorRT 10.7 vs an engine built on Orin/10.3
    backend = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                            device="cuda:0"))
    with pytest.raises(BackendError) as err:
        backend.load()
    text = str(err.value)
    assert_one_line(text, "does not fit this system", "TensorRT version differs",
                    "'10.3.0'", "'10.7.0'", "GPU differs", "compute capability differs",
                    "engine_rebuild: auto")
    command = expected_command(engine, tmp_path)
    assert text.count(f"rebuild with: {command}") == 1


def test_backend_auto_rebuild_failure_is_reported(monkeypatch, tmp_path, caplog):
    engine, manifest = make_engine_dir(tmp_path)
    fake_tensorrt(monkeypatch, "10.7.0")
    fake_cudart(monkeypatch)
    calls = []

    def failing_builder(args, log):
        calls.append(args)
        log("vla_export tensorrt: build failed: TensorRT could not build the encoder engine")
        return 1, ["vla_export tensorrt: build failed: TensorRT could not build the encoder "
                   "engine"]

    monkeypatch.setattr(trb, "run_builder", failing_builder)
    backend = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                            device="cuda", engine_rebuild="auto"))
    with caplog.at_level(logging.WARNING), pytest.raises(BackendError) as err:
        backend.load()
    assert calls == [tm.rebuild_args(manifest, engine)]
    assert calls[0][:3] == ["tensorrt", "--onnx", str(tmp_path / "policy.onnx")]
    text = str(err.value)
    assert_one_line(text, "automatic rebuild of", "vla_export exit 1", "could not build",
                    "TensorRT version differs")
    assert "REBUILDING the TensorRT engines NOW, at start-up" in caplog.text


def test_run_builder_is_a_child_process_running_vla_export():
    lines = []
    code, tail = trb.run_builder(["tensorrt", "--help"], lines.append)
    assert code == 0
    assert lines[0].startswith("vla_export: usage: vla_export tensorrt")
    assert all(line.startswith("vla_export: ") for line in lines)
    assert "--calib-cache" in "\n".join(lines) and len(tail) <= 20
    code, tail = trb.run_builder(["tensorrt", "--onnx", "/nonexistent/policy.onnx"],
                                 lambda _: None)
    assert code != 0 and "does not exist" in tail[-1]


def test_rebuild_args_reuse_the_cache_when_the_calibration_source_is_gone(tmp_path):
    engine, manifest = make_engine_dir(tmp_path)
    cache = tmp_path / "policy.calib.cache"
    manifest.precision = "int8"
    manifest.build_args.update(calib=str(tmp_path / "gone_bag"), calib_cache=str(cache),
                               calib_batches=8)
    args = tm.rebuild_args(manifest, engine)  # no cache either: the builder names the source
    assert args[args.index("--calib") + 1] == str(tmp_path / "gone_bag")
    cache.write_bytes(b"calibration table")
    args = tm.rebuild_args(manifest, engine)
    assert "--calib" not in args and args[args.index("--calib-cache") + 1] == str(cache)
    (tmp_path / "gone_bag").mkdir()
    args = tm.rebuild_args(manifest, engine)
    assert args[args.index("--calib") + 1] == str(tmp_path / "gone_bag")
    assert tm.rebuild_command(manifest, engine) == shlex.join(["vla_export", *args])


def test_engine_problems_without_manifest(tmp_path):
    engine = tmp_path / "lonely.engine"
    engine.write_bytes(b"x")
    with pytest.raises(BackendError, match="lonely.engine.json' does not exist.*rebuild it with "
                                           "vla_export tensorrt"):
        engine_problems(engine, FACTS)


def test_mismatch_message_dedups_command(tmp_path):
    engine, manifest = make_engine_dir(tmp_path)
    _, problems = engine_problems(engine, dict(FACTS, gpu_name="X", compute_capability="1.0"))
    message = mismatch_message(manifest, engine, problems)
    assert message.count("rebuild with:") == 1 and " | " in message


# ----------------------------------------------------------------------------- progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_build_progress_lines():
    clock, lines = FakeClock(), []
    progress = trt_build.BuildProgress("encoder", emit=lines.append, clock=clock, interval_s=2.0)
    progress.phase_start("Building engine", None, 3)
    clock.now += 1.5
    progress.phase_start("Tactic selection", "Building engine", 10)
    progress.phase_start("Layer 7", "Tactic selection", 4)  # third level: no line
    assert progress.step_complete("Layer 7", 0)  # first step report is printed
    clock.now += 0.5
    assert progress.step_complete("Layer 7", 1)  # rate-limited
    clock.now += 2.0
    progress.step_complete("Tactic selection", 4)
    progress.phase_finish("Layer 7")
    progress.phase_finish("Tactic selection")
    assert lines == [
        "[    0.0 s] encoder: Building engine (3 steps)",
        "[    1.5 s] encoder: Building engine > Tactic selection (10 steps)",
        "[    1.5 s] encoder: Building engine > Tactic selection > Layer 7 1/4",
        "[    4.0 s] encoder: Building engine > Tactic selection 5/10",
        "[    4.0 s] encoder: Building engine > Tactic selection done",
    ]
    progress.cancel()
    assert progress.step_complete("Building engine", 1) is False


def test_progress_monitor_adapter():
    assert trt_build.make_progress_monitor(types.SimpleNamespace(), None) is None

    class Base:
        def __init__(self):
            pass

    fake = types.SimpleNamespace(IProgressMonitor=Base)
    lines = []
    progress = trt_build.BuildProgress("step", emit=lines.append, clock=FakeClock())
    monitor = trt_build.make_progress_monitor(fake, progress)
    assert isinstance(monitor, Base)
    monitor.phase_start("Building engine", None, 2)
    assert monitor.step_complete("Building engine", 0) is True
    monitor.phase_finish("Building engine")
    assert [line.split("step: ")[1] for line in lines] == [
        "Building engine (2 steps)", "Building engine 1/2", "Building engine done"]


# ----------------------------------------------------------------------------- calibration


COLORS = [(10 * i, 255 - 20 * i, 7 * i) for i in range(7)]


def write_image_bag(path: Path, colors=COLORS, size=(48, 64)) -> None:
    """A rosbag2 (sqlite3) bag of solid-colour rgb8 sensor_msgs/Image frames."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    image_t, header_t = ts.types["sensor_msgs/msg/Image"], ts.types["std_msgs/msg/Header"]
    time_t = ts.types["builtin_interfaces/msg/Time"]
    h, w = size
    with Writer(path, version=8) as writer:
        conn = writer.add_connection("/camera/image_raw", image_t.__msgtype__, typestore=ts)
        for i, color in enumerate(colors):
            frame = np.empty((h, w, 3), np.uint8)
            frame[:] = color
            msg = image_t(header=header_t(stamp=time_t(sec=i, nanosec=0), frame_id="cam"),
                          height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                          data=frame.reshape(-1))
            writer.write(conn, (i + 1) * 100_000_000, ts.serialize_cdr(msg, image_t.__msgtype__))


def test_calibration_batches_from_bag(tmp_path):
    bag = tmp_path / "calib_bag"
    write_image_bag(bag)
    prompts = [np.array([0, 4, 9, 10, 11]), np.array([0, 4, 12])]
    batches = calibration.CalibrationBatches(bag, 32, prompts, batch_size=3, pad_id=1)
    assert batches.shapes() == {"image": (3, 32, 32, 3), "text_ids": (3, 5)}
    out = list(batches)
    assert len(out) == 2  # 7 frames -> 2 full batches of 3; the partial last batch is dropped
    for i, batch in enumerate(out):
        assert batch["image"].shape == (3, 32, 32, 3) and batch["image"].dtype == np.uint8
        assert batch["text_ids"].shape == (3, 5) and batch["text_ids"].dtype == np.int64
        for row in range(3):
            frame = 3 * i + row
            np.testing.assert_array_equal(batch["image"][row], np.broadcast_to(
                np.array(COLORS[frame], np.uint8), (32, 32, 3)))  # frame order kept
            expected = [0, 4, 9, 10, 11] if frame % 2 == 0 else [0, 4, 12, 1, 1]  # padded
            assert batch["text_ids"][row].tolist() == expected
    limited = calibration.CalibrationBatches(bag, 32, prompts, batch_size=2, max_batches=1,
                                           dtypes={"text_ids": np.int32})
    (only,) = list(limited)
    assert only["text_ids"].dtype == np.int32 and only["image"].shape == (2, 32, 32, 3)
    assert list(calibration.CalibrationBatches(bag, 32, prompts[0], batch_size=8)) == []


def test_calibration_batches_image_folder_and_errors(tmp_path):
    import cv2

    for i, color in enumerate(COLORS[:4]):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((20, 30, 3), color[::-1], np.uint8))
    (single,) = [b for b in calibration.CalibrationBatches(tmp_path, 16, np.array([0, 5]),
                                                         batch_size=4)]
    assert single["image"].shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(single["image"][1, 0, 0], np.array(COLORS[1], np.uint8))
    bgr = list(calibration.CalibrationBatches(tmp_path, 16, np.array([0]), channel_order="bgr"))
    np.testing.assert_array_equal(bgr[1]["image"][0, 0, 0], np.array(COLORS[1][::-1]))
    with pytest.raises(ValueError, match="batch_size 0"):
        calibration.CalibrationBatches(tmp_path, 16, [np.array([1])], batch_size=0)
    with pytest.raises(ValueError, match="non-empty prompt"):
        calibration.CalibrationBatches(tmp_path, 16, [np.array([], np.int64)])


class FakeCuda:
    def __init__(self):
        self.memory, self.next = {}, 0x1000

    def malloc(self, nbytes):
        self.next += 0x1000
        self.memory[self.next] = None
        return self.next

    def copy_to_device(self, ptr, array):
        self.memory[ptr] = np.array(array)

    def free(self, ptr):
        del self.memory[ptr]


def test_calibrator_feeds_batches_and_caches(tmp_path):
    class Base:
        def __init__(self):
            pass

    fake_trt = types.SimpleNamespace(IInt8EntropyCalibrator2=Base)
    cuda = FakeCuda()
    batches = [{"image": np.full((1, 4, 4, 3), i, np.uint8), "text_ids": np.array([[0, i]])}
               for i in range(2)]
    cache = tmp_path / "sub" / "m.calib.cache"
    calib = calibration.make_calibrator(fake_trt, cuda, batches, cache, read_cache=False)
    assert calib.get_batch_size() == 1
    ptrs = calib.get_batch(["text_ids", "image"])
    assert cuda.memory[ptrs[0]].tolist() == [[0, 0]] and cuda.memory[ptrs[1]].shape == (1, 4, 4, 3)
    assert calib.get_batch(["image", "text_ids"]) is not None
    assert calib.get_batch(["image", "text_ids"]) is None  # exhausted
    assert calib.read_calibration_cache() is None  # recalibrating: the old table is not read
    calib.write_calibration_cache(memoryview(b"TRT-1001-EntropyCalibration2"))
    assert cache.read_bytes() == b"TRT-1001-EntropyCalibration2"
    reuse = calibration.make_calibrator(fake_trt, cuda, [], cache, read_cache=True)
    assert reuse.read_calibration_cache() == b"TRT-1001-EntropyCalibration2"
    assert reuse.get_batch(["image"]) is None
    calib.free()
    assert cuda.memory == {}
    broken = calibration.make_calibrator(fake_trt, cuda, batches, cache, read_cache=False)
    assert broken.get_batch(["missing"]) is None and isinstance(broken.error, KeyError)


# ----------------------------------------------------------------------------- fake TensorRT
# TensorRT and CUDA stand-ins: "device" pointers are host ctypes buffers, engines compute a known
# numpy function. They run the build glue and the backend's buffer/shape/graph handling here;
# numerical agreement of real engines is the GPU tests' job.


class FakeCudart(types.ModuleType):
    """cuda-python's runtime module over host memory."""

    def __init__(self, name=b"NVIDIA H100 80GB HBM3", cc=(9, 0)):
        super().__init__("cuda.bindings.runtime")
        ok = CudaErr.cudaSuccess
        self.ok, self.cudaError_t, self.cudaStreamNonBlocking = ok, CudaErr, 1
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1,
                                                    cudaMemcpyDeviceToHost=2)
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=2)
        self.props = types.SimpleNamespace(name=name, major=cc[0], minor=cc[1])
        self.buffers, self.capturing, self.launches, self.streams = {}, None, 0, set()
        self.set_device_calls = 0

    def cudaGetDeviceCount(self):
        return self.ok, 1

    def cudaSetDevice(self, index):
        self.set_device_calls += 1
        return (self.ok,)

    def cudaGetDeviceProperties(self, index):
        return self.ok, self.props

    def cudaGetErrorName(self, err):
        return self.ok, err.name.encode()

    def cudaGetErrorString(self, err):
        return self.ok, b"fake error"

    def cudaGetLastError(self):
        return (self.ok,)

    def cudaMalloc(self, nbytes):
        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buf)] = buf
        return self.ok, ctypes.addressof(buf)

    cudaMallocHost = cudaMalloc

    def cudaFree(self, ptr):
        del self.buffers[ptr]
        return (self.ok,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        assert stream in self.streams
        ctypes.memmove(dst, src, nbytes)
        return (self.ok,)

    def cudaMemcpy(self, dst, src, nbytes, kind):
        ctypes.memmove(dst, src, nbytes)
        return (self.ok,)

    def cudaMemsetAsync(self, ptr, value, nbytes, stream):
        ctypes.memset(ptr, value, nbytes)
        return (self.ok,)

    def cudaStreamCreateWithFlags(self, flags):
        self.streams.add(77)
        return self.ok, 77

    def cudaStreamSynchronize(self, stream):
        return (self.ok,)

    def cudaStreamDestroy(self, stream):
        self.streams.discard(stream)
        return (self.ok,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (self.ok,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return self.ok, graph

    def cudaGraphInstantiate(self, graph, flags):
        return self.ok, types.SimpleNamespace(runs=list(graph))

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for run in graph_exec.runs:
            run()
        return (self.ok,)

    def cudaGraphDestroy(self, graph):
        return (self.ok,)

    cudaGraphExecDestroy = cudaGraphDestroy


def host_array(ptr: int, dtype, shape) -> np.ndarray:
    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_char * count).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def fake_encoder(inputs: dict) -> dict:
    image, ids = inputs["image"].astype(np.float32), inputs["text_ids"].astype(np.float32)
    dim = TINY_SPEC["feature_dim"]
    feature = image.mean() / 255 + ids.sum() * np.arange(dim, dtype=np.float32) / dim
    return {"feature": feature[None].astype(np.float32)}


def fake_step(inputs: dict) -> dict:
    chunk, adim = TINY_SPEC["chunk"], TINY_SPEC["action_dim"]
    pooled = inputs["features"].sum(axis=1)[:, : chunk * adim] + inputs["h0"].sum()
    return {"actions": np.tanh(pooled).reshape(1, chunk, adim).astype(np.float32),
            "hn": inputs["h0"] + 1, "cn": inputs["c0"]}


class FakeEngine:
    """Named I/O tensors (TensorRT 10 API) computing ``fn`` on "device" memory."""

    def __init__(self, trt, tensors: dict, fn, out_shapes):
        self.trt, self.tensors, self.fn, self.out_shapes = trt, tensors, fn, out_shapes
        self.names = list(tensors)
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_shape(self, name):
        return self.tensors[name][2]

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        return self.tensors[name][3]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.fail_in_capture = engine, {}, {}, False

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.shapes:
            return self.shapes[name]
        return self.engine.out_shapes(self.shapes)[name]

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream):
        rt = self.engine.trt.cudart
        if rt.capturing is not None:
            if self.fail_in_capture:
                raise RuntimeError("operation not permitted when stream is capturing")
            rt.capturing.append(self._run)
        else:
            self._run()
        return True

    def _run(self):
        tensors = self.engine.tensors
        inputs = {n: host_array(self.addresses[n], tensors[n][1], self.shapes[n]).copy()
                  for n, t in tensors.items() if t[0] == "in"}
        for name, value in self.engine.fn(inputs).items():
            host_array(self.addresses[name], tensors[name][1], value.shape)[...] = value


class FakeTensorRT(types.ModuleType):
    """The parts of the ``tensorrt`` module the build and the backend use."""

    def __init__(self, cudart, version="10.7.0", text_dtype=np.int64):
        super().__init__("tensorrt")
        trt = self
        self.__version__, self.cudart, self.text_dtype = version, cudart, text_dtype
        self.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
        self.nptype = np.dtype
        self.built, self.configs = [], []

        class ILogger:
            Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3,
                                             VERBOSE=4)

            def __init__(self):
                pass

        class IProgressMonitor:
            def __init__(self):
                pass

        class IInt8EntropyCalibrator2:
            def __init__(self):
                pass

        class Runtime:
            def __init__(self, logger):
                self.logger = logger

            def deserialize_cuda_engine(self, data):
                return trt.engine(bytes(data[:20]))

        self.ILogger, self.IProgressMonitor, self.Runtime = ILogger, IProgressMonitor, Runtime
        self.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        self.Builder = lambda logger: FakeBuilder(trt)
        self.OnnxParser = lambda network, logger: FakeParser(network)

    def engine(self, head: bytes):
        """The encoder or step engine, by the serialized bytes' first letters."""
        f32, dim, w = np.dtype(np.float32), TINY_SPEC["feature_dim"], TINY_SPEC["window_size"]
        size = TINY_SPEC["image_size"]
        if head.startswith((b"S", b"ENGINE-step")):
            state = (2, 1, 64)
            tensors = {"features": ("in", f32, (1, -1, dim), [(1, 1, dim), (1, w, dim),
                                                              (1, w, dim)]),
                       "h0": ("in", f32, state, None), "c0": ("in", f32, state, None),
                       "actions": ("out", f32, (1, 1, 3), None), "hn": ("out", f32, state, None),
                       "cn": ("out", f32, state, None)}
            return FakeEngine(self, tensors, fake_step, lambda shapes: {
                "actions": (1, 1, 3), "hn": state, "cn": state})
        ids = np.dtype(self.text_dtype)
        tensors = {"image": ("in", np.dtype(np.uint8), (1, size, size, 3), None),
                   "text_ids": ("in", ids, (1, -1), [(1, 1), (1, 24), (1, 64)]),
                   "feature": ("out", f32, (1, dim), None)}
        return FakeEngine(self, tensors, fake_encoder, lambda shapes: {"feature": (1, dim)})


class FakeNetwork:
    def __init__(self):
        self.inputs = []

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]


class FakeParser:
    def __init__(self, network):
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path):
        step = path.endswith(".step.onnx")
        label = "step" if step else "encoder"
        engine = FakeTensorRT(None).engine(b"ENGINE-" + label.encode())
        self.network.label = label
        self.network.inputs = [types.SimpleNamespace(name=n, shape=t[2], dtype=t[1])
                               for n, t in engine.tensors.items() if t[0] == "in"]
        return True


class FakeConfig:
    def __init__(self):
        self.flags, self.profiles, self.calib_profile = set(), [], None
        self.int8_calibrator = self.progress_monitor = self.timing = None

    def set_memory_pool_limit(self, pool, nbytes):
        self.workspace = nbytes

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)
        self.cleared = flag

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def set_calibration_profile(self, profile):
        self.calib_profile = profile

    def create_timing_cache(self, data):
        return types.SimpleNamespace(serialize=lambda: bytes(data) + b"+")

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing = cache
        return True

    def get_timing_cache(self):
        return self.timing


class FakeBuilder:
    platform_has_fast_fp16 = True

    def __init__(self, trt):
        self.trt = trt

    def create_network(self, flags):
        return FakeNetwork()

    def create_builder_config(self):
        config = FakeConfig()
        self.trt.configs.append(config)
        return config

    def create_optimization_profile(self):
        profile = types.SimpleNamespace(shapes={})
        profile.set_shape = lambda name, lo, opt, hi: profile.shapes.update(
            {name: (tuple(lo), tuple(opt), tuple(hi))})
        return profile

    def build_serialized_network(self, network, config):
        monitor = config.progress_monitor
        monitor.phase_start("Building engine", None, 2)
        assert monitor.step_complete("Building engine", 0)
        monitor.phase_finish("Building engine")
        calib = config.int8_calibrator
        if calib is not None:
            names = sorted(config.calib_profile.shapes)
            while calib.get_batch(names) is not None:
                pass
            calib.write_calibration_cache(b"TRT-table")
        self.trt.built.append((network.label, sorted(config.flags)))
        return b"ENGINE-" + network.label.encode() + b"-" * 64


@pytest.fixture
def fakes(monkeypatch):
    """Install fake ``tensorrt`` and cuda-python modules; return (trt, cudart)."""
    cudart = FakeCudart()
    trt = FakeTensorRT(cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for mod in ("cuda", "cuda.bindings"):
        monkeypatch.setitem(sys.modules, mod, types.ModuleType(mod))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    return trt, cudart


H100 = {"tensorrt_version": "10.7.0", "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0"}


def test_fake_backend_runs_engines(fakes, tmp_path):
    trt, cudart = fakes
    engine, _ = make_engine_dir(tmp_path, facts=H100)
    backend = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine)))
    backend.load()
    info = backend.describe()
    assert info.provider == "TensorRT 10.7.0" and info.precision == "fp16"
    assert info.device == "cuda:0 (NVIDIA H100 80GB HBM3)" and info.extra["cuda_graph"] == "off"
    assert "device 'cpu' ignored" in info.warnings[0]
    assert backend.spec.window_size == 4 and backend.tokenizer.max_tokens == 64
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    ids = backend.tokenizer.encode("go to the red box")
    history = rng.standard_normal((3, 64)).astype(np.float32)
    feature, actions = backend.infer(image, ids, history)
    expected = fake_encoder({"image": image[None], "text_ids": ids[None]})["feature"][0]
    np.testing.assert_allclose(feature, expected, rtol=1e-6)
    window = np.concatenate([history, feature[None]])
    np.testing.assert_allclose(actions, fake_step({
        "features": window[None], "h0": np.zeros((2, 1, 64), np.float32),
        "c0": np.zeros((2, 1, 64), np.float32)})["actions"][0], rtol=1e-6)  # h0/c0 zeroed
    short = backend.decode(window[:1])  # the window is filling: T=1
    np.testing.assert_allclose(short, np.tanh(window[0, :3])[None], rtol=1e-6)
    backend.warmup(2)
    with pytest.raises(BackendError, match=r"'text_ids' shape \(1, 65\) is outside.*max "
                                           r"\(1, 64\).*--max-text-len"):
        backend.encode(image, np.ones(65, np.int64))
    backend.close()
    backend.close()  # idempotent
    assert cudart.buffers == {} and cudart.streams == set()


def test_fake_backend_int32_ids_and_cuda_graph(fakes, tmp_path, caplog):
    trt, cudart = fakes
    trt.text_dtype = np.int32  # TensorRT 8.6's ONNX parser turns int64 inputs into int32
    engine, _ = make_engine_dir(tmp_path, facts=H100)
    backend = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                            device="cuda:0", cuda_graph=True))
    backend.load()
    assert backend.describe().extra["cuda_graph"].startswith("on (window 4")
    feature = backend.encode(np.zeros((224, 224, 3), np.uint8), np.array([3, 4], np.int64))
    np.testing.assert_allclose(feature, 7 * np.arange(64) / 64, rtol=1e-6)
    window = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    launches = cudart.launches
    with_graph = backend.decode(window)
    assert cudart.launches == launches + 1  # the full window replays the graph
    backend.decode(window[:2])
    assert cudart.launches == launches + 1  # shorter windows run normally
    again = backend.decode(window)  # first full window after that: one plain run
    assert cudart.launches == launches + 1
    backend.decode(window)
    assert cudart.launches == launches + 2  # then graph replays again
    np.testing.assert_allclose(with_graph, np.tanh(window.sum(0)[:3])[None], rtol=1e-6)
    np.testing.assert_allclose(again, with_graph, rtol=1e-6)
    set_device_calls = cudart.set_device_calls
    worker = threading.Thread(target=backend.decode, args=(window,))
    worker.start()
    worker.join()
    assert cudart.set_device_calls == set_device_calls + 1  # the device is current per thread
    backend.close()

    original = FakeContext.__init__

    def failing(self, engine):
        original(self, engine)
        self.fail_in_capture = True

    FakeContext.__init__ = failing
    try:
        with caplog.at_level(logging.WARNING):
            fallback = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                                     cuda_graph=True))
            fallback.load()
    finally:
        FakeContext.__init__ = original
    state = fallback.describe().extra["cuda_graph"]
    assert state.startswith("off (capture failed") and "not permitted" in state
    assert "cuda_graph requested but not used" in caplog.text
    np.testing.assert_allclose(fallback.decode(window), with_graph, rtol=1e-6)
    fallback.close()
    assert cudart.buffers == {}


def fake_metadata(monkeypatch, folder: Path) -> Path:
    """An export's encoder/step files and the metadata `read_export_metadata` would return."""
    onnx = folder / "policy.onnx"
    onnx.write_bytes(b"encoder graph")
    (folder / "policy.step.onnx").write_bytes(b"step graph")
    meta = {"format": "1", "role": "encoder", "step_file": "policy.step.onnx",
            "model_spec": TINY_SPEC, "policy_config": preset_config("tiny").to_dict(),
            "tokenizer": json.loads(tokenizer_json()), "normalization": {"mean": [0.5] * 3},
            "export": {"opset": 17, "max_text_len": 108},
            "step_path": str(folder / "policy.step.onnx")}
    monkeypatch.setattr("mobile_vla_node.backends.onnx_format.read_export_metadata",
                        lambda path: dict(meta))
    return onnx


def test_fake_build_engines_fp16(fakes, monkeypatch, tmp_path):
    trt, _ = fakes
    onnx = fake_metadata(monkeypatch, tmp_path)
    lines = []
    options = trt_build.BuildOptions(onnx=onnx, output=None, precision="fp16", max_text_len=48)
    manifest = trt_build.build_engines(options, log=lines.append)
    engine = tmp_path / "policy.engine"
    assert engine.read_bytes().startswith(b"ENGINE-encoder")
    assert tm.step_engine_path(engine).read_bytes().startswith(b"ENGINE-step")
    assert tm.EngineManifest.load(tm.manifest_path(engine)) == manifest
    assert manifest.gpu_name == "NVIDIA H100 80GB HBM3" and manifest.step_precision == "fp16"
    assert manifest.builder_flags == {"encoder": ["FP16", "TIMING_CACHE(new)"],
                                      "step": ["FP16", "TIMING_CACHE(reused)"]}
    assert manifest.profiles["encoder"]["text_ids"]["max"] == [1, 48]
    encoder_profile = trt.configs[0].profiles[0].shapes
    assert encoder_profile["text_ids"] == ((1, 1), (1, 24), (1, 48))
    assert trt.configs[1].profiles[0].shapes["features"] == ((1, 1, 64), (1, 4, 64), (1, 4, 64))
    assert (tmp_path / "trt_timing.cache").read_bytes() == b"++"  # reused by the second build
    text = "\n".join(lines)
    assert "] encoder: Building engine (2 steps)" in text and "] step: Building engine" in text
    assert "built in" in text and "text_len 1/24/48" in text and "window 1/4/4" in text
    assert tm.rebuild_command(manifest, engine).endswith("--max-text-len 48")
    too_long = trt_build.BuildOptions(onnx=onnx, output=None, max_text_len=200)
    with pytest.raises(tm.ManifestError, match="max=200 exceeds the model's prompt limit of 108"):
        trt_build.build_engines(too_long, log=lines.append)


def test_fake_build_fp32_clears_tf32(fakes, monkeypatch, tmp_path):
    trt, _ = fakes
    onnx = fake_metadata(monkeypatch, tmp_path)
    trt_build.build_engines(trt_build.BuildOptions(onnx=onnx, output=None, precision="fp32"),
                            log=lambda text: None)
    assert all(c.cleared == "TF32" and not c.flags for c in trt.configs)


def test_fake_build_int8_calibrates_encoder_only(fakes, monkeypatch, tmp_path):
    trt, cudart = fakes
    onnx = fake_metadata(monkeypatch, tmp_path)
    bag = tmp_path / "bag"
    write_image_bag(bag)
    options = trt_build.BuildOptions(onnx=onnx, output=None, precision="int8", calib=str(bag),
                                     calib_batches=5)
    lines = []
    manifest = trt_build.build_engines(options, log=lines.append)
    assert trt.built == [("encoder", ["FP16", "INT8"]), ("step", ["FP16"])]
    assert manifest.precision == "int8" and manifest.step_precision == "fp16"
    cache = tmp_path / "policy.calib.cache"
    assert cache.read_bytes() == b"TRT-table"
    calib_shapes = trt.configs[0].calib_profile.shapes
    assert calib_shapes["image"][0] == (1, 224, 224, 3)
    assert calib_shapes["text_ids"][0] == calib_shapes["text_ids"][2]  # min = max
    assert "calibrating the encoder with 5 batches of 1 frame(s)" in "\n".join(lines)
    assert "keep the tiny step engine in fp16" in lines[0]
    assert cudart.buffers == {}  # calibration buffers freed
    # Without --calib the cache is reused.
    trt.built.clear()
    reuse = trt_build.BuildOptions(onnx=onnx, output=None, precision="int8")
    trt_build.build_engines(reuse, log=lines.append)
    assert trt.built[0] == ("encoder", ["FP16", "INT8"])
    assert "using the calibration cache" in "\n".join(lines)


def test_fake_auto_rebuild_at_startup(fakes, monkeypatch, tmp_path, caplog):
    """The backend hands `rebuild_args` to vla_export; run here in-process on the fakes."""
    from mobile_vla_node.export import cli

    fake_metadata(monkeypatch, tmp_path)
    engine, manifest = make_engine_dir(tmp_path)  # built on Orin / TensorRT 10.3
    assert manifest.gpu_name == "Orin"
    ran = []

    def in_process_builder(args, log):  # the child process cannot see the stand-in modules
        ran.append(args)
        monkeypatch.setattr(trt_build, "check_parity", lambda options, manifest, log: 0)
        return cli.main(list(args)), []

    monkeypatch.setattr(trb, "run_builder", in_process_builder)
    backend = TensorRTBackend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                            engine_rebuild="auto"))
    with caplog.at_level(logging.WARNING):
        backend.load()
    assert ran == [tm.rebuild_args(manifest, engine)]
    rebuilt = tm.EngineManifest.load(tm.manifest_path(engine))
    assert rebuilt.gpu_name == "NVIDIA H100 80GB HBM3" and rebuilt.tensorrt_version == "10.7.0"
    assert "REBUILDING the TensorRT engines NOW" in caplog.text
    assert "rebuilt TensorRT engines" in caplog.text
    assert backend.decode(np.zeros((4, 64), np.float32)).shape == (1, 3)
    backend.close()



def make_reference(offset: float):
    """A stand-in ONNX reference computing the fake engines' functions (+ offset on features)."""
    from mobile_vla_node.backends.base import BackendInfo, InferenceBackend, ModelSpec

    class Reference(InferenceBackend):
        name = "onnx"

        def load(self):
            self.spec = ModelSpec(**TINY_SPEC)
            self.tokenizer = PromptTokenizer.from_json(tokenizer_json())
            self.info = BackendInfo(name="onnx", device="cpu", precision="fp32")

        def encode(self, image, text_ids):
            out = fake_encoder({"image": image[None], "text_ids": text_ids[None]})["feature"]
            return out[0] + offset

        def decode(self, features):
            zeros = np.zeros((2, 1, 64), np.float32)
            return fake_step({"features": features[None], "h0": zeros, "c0": zeros})[
                "actions"][0]

    return Reference


@pytest.mark.parametrize("offset,code", [(0.0, 0), (0.5, 3)])
def test_fake_run_parity_exit_codes(fakes, monkeypatch, tmp_path, capsys, offset, code):
    pytest.importorskip("mobile_vla_node.export.parity")
    import mobile_vla_node.backends as backends

    onnx = fake_metadata(monkeypatch, tmp_path)
    real = backends.backend_class
    monkeypatch.setattr(backends, "backend_class", lambda name: make_reference(offset)
                        if name == "onnx" else real(name))
    assert trt_build.main(["--onnx", str(onnx), "--precision", "fp32"]) == code
    captured = capsys.readouterr()
    parity = tm.EngineManifest.load(tm.manifest_path(tmp_path / "policy.engine")).parity
    assert parity["passed"] is (code == 0) and parity["atol"] == 1e-3
    if code == 0:
        assert "parity passed at atol 0.001" in captured.out and captured.err == ""
    else:
        assert_one_line(captured.err, "parity FAILED at fp32: largest error in output "
                                      "'feature': max abs 0.5 > atol 0.001")


# ----------------------------------------------------------------------------- GPU


def _gpu_available() -> bool:
    from mobile_vla_node.backends.tensorrt_backend import import_cudart, import_tensorrt

    try:
        import_tensorrt()
        CudaRuntime(import_cudart(), 0)
    except BackendError:
        return False
    return True


gpu = pytest.mark.skipif(not _gpu_available(),
                         reason="needs the tensorrt Python package, cuda-python and a CUDA GPU "
                                "(JetPack python3-libnvinfer or pip install tensorrt)")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_export") / "tiny.onnx"
    proc = subprocess.run([sys.executable, "-m", "mobile_vla_node.export.cli", "onnx",
                           "--preset", "tiny", "--output", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_build_parity_and_infer(tiny_onnx, precision, capsys):
    engine = tiny_onnx.with_name(f"tiny_{precision}.engine")
    code = trt_build.main(["--onnx", str(tiny_onnx), "--output", str(engine), "--precision",
                           precision])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "parity passed" in out and "built in" in out and " s] encoder:" in out
    manifest = tm.EngineManifest.load(tm.manifest_path(engine))
    assert manifest.parity["passed"] is True and tm.step_engine_path(engine).is_file()
    assert (tiny_onnx.parent / "trt_timing.cache").stat().st_size > 0

    onnx_ref = create_backend(BackendConfig(backend="onnx", model_path=str(tiny_onnx)))
    onnx_ref.load()
    results = {}
    for graph in (False, True):
        backend = create_backend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                               device="cuda:0", cuda_graph=graph))
        backend.load()
        info = backend.describe()
        assert info.provider.startswith("TensorRT ") and info.precision == precision
        if graph:
            assert info.extra["cuda_graph"].startswith("on"), info.extra["cuda_graph"]
        spec = backend.spec
        rng = np.random.default_rng(1)
        image = rng.integers(0, 256, (spec.image_size, spec.image_size, 3), dtype=np.uint8)
        ids = backend.tokenizer.encode("go to the red box")
        history = rng.standard_normal((spec.window_size - 1, spec.feature_dim)).astype(np.float32)
        feature, actions = backend.infer(image, ids, history)
        assert feature.shape == (spec.feature_dim,) and actions.shape == (spec.chunk,
                                                                          spec.action_dim)
        ref_feature, ref_actions = onnx_ref.infer(image, ids, history)
        atol = default_atol(precision, "tensorrt")
        np.testing.assert_allclose(feature, ref_feature, atol=atol)
        np.testing.assert_allclose(actions, ref_actions, atol=atol)
        short = backend.decode(history[:1])  # a window shorter than the captured one
        assert short.shape == actions.shape
        results[graph] = actions
        backend.close()
    np.testing.assert_allclose(results[True], results[False], atol=1e-6)
    onnx_ref.close()


@gpu
def test_gpu_engine_mismatch_is_refused(tiny_onnx, tmp_path):
    engine = tmp_path / "tiny.engine"
    assert trt_build.main(["--onnx", str(tiny_onnx), "--output", str(engine),
                           "--precision", "fp16"]) == 0
    path = tm.manifest_path(engine)
    data = json.loads(path.read_text())
    data["gpu_name"] = "Some Other GPU"
    path.write_text(json.dumps(data))
    with pytest.raises(BackendError, match="GPU differs.*rebuild with: vla_export tensorrt"):
        create_backend(BackendConfig(backend="tensorrt", model_path=str(engine),
                                     device="cuda:0")).load()
