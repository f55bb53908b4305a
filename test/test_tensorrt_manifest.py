"""TensorRT engine manifests (backends/trt_manifest.py), on a CPU.

Save/load, every mismatch kind, the rebuild command and its arguments, precision, profile and
prompt-length validation.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import pytest
from fakes_tensorrt import (
    FACTS,
    TINY_SPEC,
    expected_command,
    make_engine_dir,
    tokenizer_json,
)

from mobile_vla_node.backends import trt_manifest as tm
from mobile_vla_node.model.presets import preset_config
from mobile_vla_node.model.tokenizer import PromptTokenizer

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
