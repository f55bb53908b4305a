"""OnnxBackend: runs an export from its metadata alone, matches TorchBackend, reports providers."""

from __future__ import annotations

import contextlib
import io
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from mobile_vla_node.backends import BackendError, create_backend
from mobile_vla_node.backends.onnx_backend import OnnxBackend
from mobile_vla_node.backends.onnx_format import ExportFormatError, read_export_metadata
from mobile_vla_node.backends.torch_backend import TorchBackend
from mobile_vla_node.core.config import BackendConfig
from mobile_vla_node.export import cli
from mobile_vla_node.export.parity import make_cases, run_parity

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
HAS_CUDA = CUDA in ort.get_available_providers()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx_backend") / "tiny.onnx"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = cli.main(["onnx", "--preset", "tiny", "--output", str(path), "--parity-cases", "1"])
    assert rc == 0, out.getvalue()
    return path


@pytest.fixture(scope="module")
def torch_backend():
    backend = TorchBackend(BackendConfig(backend="torch", model_preset="tiny"))
    backend.load()
    return backend


def load_onnx(path, **kw):
    backend = OnnxBackend(BackendConfig(backend="onnx", model_path=str(path), **kw))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def onnx_backend(onnx_path):
    return load_onnx(onnx_path)


def test_registry_creates_onnx_backend(onnx_path):
    backend = create_backend(BackendConfig(backend="onnx", model_path=str(onnx_path)))
    assert isinstance(backend, OnnxBackend) and backend.name == "onnx"


def test_describe_reports_actual_provider(onnx_backend, onnx_path):
    info = onnx_backend.describe()
    assert info.name == "onnx" and info.device == "cpu" and info.precision == "fp32"
    assert info.provider == CPU
    assert info.model == str(onnx_path.resolve())
    assert info.extra["step_model"] == str(onnx_path.with_name("tiny.step.onnx").resolve())
    assert info.warnings == []


def test_spec_and_tokenizer_come_from_metadata(onnx_backend, torch_backend):
    assert onnx_backend.spec == torch_backend.spec
    for command in ("stop", "go to the red box"):
        np.testing.assert_array_equal(onnx_backend.tokenizer.encode(command),
                                      torch_backend.tokenizer.encode(command))


def test_matches_torch_backend(onnx_backend, torch_backend):
    cases = make_cases(torch_backend, n_random=5, seed=3)
    assert {len(c.history) for c in cases} == set(range(torch_backend.spec.window_size))
    for case in cases:
        f_ref, a_ref = torch_backend.infer(case.image, case.text_ids, case.history)
        f_onnx, a_onnx = onnx_backend.infer(case.image, case.text_ids, case.history)
        assert f_onnx.dtype == np.float32 and f_onnx.shape == f_ref.shape
        assert a_onnx.shape == a_ref.shape == (torch_backend.spec.chunk,
                                               torch_backend.spec.action_dim)
        np.testing.assert_allclose(f_onnx, f_ref, atol=1e-4, rtol=0)
        np.testing.assert_allclose(a_onnx, a_ref, atol=1e-4, rtol=0)


def test_parity_detects_a_different_model(onnx_backend, torch_backend):
    class Shifted:
        spec, tokenizer = onnx_backend.spec, onnx_backend.tokenizer

        def infer(self, image, text_ids, history):
            feature, actions = onnx_backend.infer(image, text_ids, history)
            return feature + 1e-3, actions

    results = run_parity(torch_backend, Shifted(), make_cases(torch_backend, n_random=2), 1e-4)
    by_name = {r.output: r for r in results}
    assert not by_name["feature"].passed and by_name["actions"].passed
    assert by_name["feature"].max_abs == pytest.approx(1e-3, rel=1e-2)


def test_longest_prompt_and_too_long_prompt(onnx_backend, torch_backend):
    limit = onnx_backend.max_text_len
    assert limit and limit > 16
    rng = np.random.default_rng(0)
    size = onnx_backend.spec.image_size
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    ids = np.resize(onnx_backend.tokenizer.encode("turn left towards the red door"), limit)
    np.testing.assert_allclose(onnx_backend.encode(image, ids), torch_backend.encode(image, ids),
                               atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=f"at most {limit}"):
        onnx_backend.encode(image, np.concatenate([ids, ids[:1]]))


def test_rejects_bad_shapes(onnx_backend):
    spec = onnx_backend.spec
    with pytest.raises(ValueError, match="uint8"):
        onnx_backend.encode(np.zeros((10, 10, 3), np.uint8), np.array([5], np.int64))
    with pytest.raises(ValueError, match="1 <= T"):
        onnx_backend.decode(np.zeros((spec.window_size + 1, spec.feature_dim), np.float32))


def test_warmup_and_session_options(onnx_path, torch_backend):
    backend = load_onnx(onnx_path, graph_optimization_level="disable", intra_op_threads=1)
    backend.warmup(2)
    case = make_cases(torch_backend, n_random=2)[1]
    for got, want in zip(backend.infer(case.image, case.text_ids, case.history),
                         torch_backend.infer(case.image, case.text_ids, case.history),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert backend.describe().extra["graph_optimization_level"] == "disable"
    backend.close()


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDAExecutionProvider; the test needs "
                                     "it missing")
def test_missing_first_provider_is_an_error(onnx_path):
    with pytest.raises(BackendError) as exc:
        load_onnx(onnx_path, providers=[CUDA, CPU])
    assert CUDA in str(exc.value) and "onnxruntime-gpu" in str(exc.value)


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDAExecutionProvider; the test needs "
                                     "it missing")
def test_provider_fallback_runs_on_cpu_with_warning(onnx_path, torch_backend):
    backend = load_onnx(onnx_path, providers=[CUDA, CPU], allow_provider_fallback=True)
    info = backend.describe()
    assert info.provider == CPU and info.device == "cpu"
    assert info.warnings and CUDA in info.warnings[0] and CPU in info.warnings[0]
    assert "backend_warnings" in info.as_values()
    case = make_cases(torch_backend, n_random=1)[0]
    np.testing.assert_allclose(backend.infer(case.image, case.text_ids, case.history)[1],
                               torch_backend.infer(case.image, case.text_ids, case.history)[1],
                               atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_silent_provider_drop_is_detected(onnx_path, monkeypatch):
    # ONNX Runtime reports CUDA as available but creates the session on CPU (what happens when
    # the CUDA/cuDNN libraries are missing): simulated by claiming CUDA is available.
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with pytest.raises(BackendError, match="created the session .* on CPUExecutionProvider"):
        load_onnx(onnx_path, providers=[CUDA, CPU])
    backend = load_onnx(onnx_path, providers=[CUDA, CPU], allow_provider_fallback=True)
    info = backend.describe()
    assert info.provider == CPU and info.device == "cpu"
    assert any(CUDA in w and CPU in w for w in info.warnings)


def test_missing_model_path_and_non_export_files(tmp_path, onnx_path):
    with pytest.raises(BackendError, match="needs model_path"):
        load_onnx("")
    with pytest.raises(BackendError, match="does not exist"):
        load_onnx(tmp_path / "absent.onnx")
    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(plain))
    with pytest.raises(BackendError, match="not a mobile_vla export"):
        load_onnx(plain)
    with pytest.raises(ExportFormatError, match="pass the encoder file"):
        read_export_metadata(onnx_path.with_name("tiny.step.onnx"))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(onnx_path, lonely / "tiny.onnx")
    with pytest.raises(ExportFormatError, match="step file .*tiny.step.onnx.* is missing"):
        read_export_metadata(lonely / "tiny.onnx")
