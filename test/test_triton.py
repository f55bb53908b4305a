"""backend triton against a real Triton Inference Server on localhost, over real gRPC.

The server is NVIDIA's ``tritonserver`` from the nvidia-pytriton wheel, in its own environment
(``make triton-env``; ``make test`` builds it first), serving the repository `vla_export triton`
writes, with the ONNX graphs run by ONNX Runtime inside Triton's Python backend. The client is
the robot's: `TritonBackend` with ``tritonclient.grpc``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mobile_vla_node.backends import BackendError, create_backend
from mobile_vla_node.backends.triton_backend import (
    TritonStepError,
    instance_device,
    read_headers,
    stats_delta,
)
from mobile_vla_node.core.config import BackendConfig
from mobile_vla_node.export.triton_local_server import (
    DEFAULT_ENV,
    LocalTriton,
    python_config,
)
from mobile_vla_node.export.triton_repo import model_config, pbtxt_string

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is in requirements.txt")
needs_server = pytest.mark.skipif(
    not (DEFAULT_ENV / ".installed").exists(),
    reason=f"no local Triton server environment at {DEFAULT_ENV}: run `make triton-env` "
           "(`make test` builds it first)")
COMMAND = "go to the red box"


# --- pure helpers ---------------------------------------------------------------------------

def test_pbtxt_string_escapes_json():
    text = 'a "quoted" \\ back\nslash\ttab\x01'
    assert pbtxt_string(text) == '"a \\"quoted\\" \\\\ back\\nslash\\ttab\\001"'


def test_model_config_has_batching_instances_and_parameters():
    text = model_config("m_encoder", inputs={"image": ("TYPE_UINT8", [224, 224, 3])},
                        outputs={"feature": ("TYPE_FP32", [64])}, max_batch=8,
                        backend="onnxruntime", instance_kind="KIND_GPU", instances=2, gpus=[0],
                        queue_delay_us=500, parameters={"format": "1", "x": '{"a": 1}'})
    assert 'backend: "onnxruntime"' in text and "max_batch_size: 8" in text
    assert "max_queue_delay_microseconds: 500" in text and "allow_timeout_override: true" in text
    assert "count: 2 kind: KIND_GPU gpus: [ 0 ]" in text
    assert 'key: "mobile_vla.x" value: { string_value: "{\\"a\\": 1}" }' in text
    local = python_config(text)
    assert 'backend: "python"' in local and "kind: KIND_CPU" in local and "gpus" not in local
    assert local.replace('backend: "python"', 'backend: "onnxruntime"').replace(
        "count: 2 kind: KIND_CPU", "count: 2 kind: KIND_GPU gpus: [ 0 ]") == text


def test_read_headers(tmp_path):
    path = tmp_path / "headers"
    path.write_text("# api key\nX-API-Key: secret\n\nAuthorization: Bearer abc:def\n")
    assert read_headers(str(path)) == {"x-api-key": "secret", "authorization": "Bearer abc:def"}
    assert read_headers("") == {}
    path.write_text("no colon here\n")
    with pytest.raises(BackendError, match="line 1"):
        read_headers(str(path))
    with pytest.raises(BackendError, match="does not exist"):
        read_headers(str(tmp_path / "missing"))


def test_stats_delta_and_instance_device():
    def stats(n, ns, queue, infer, executions):
        return {"execution_count": executions, "inference_stats": {
            "success": {"count": n, "ns": ns}, "queue": {"count": n, "ns": queue},
            "compute_input": {"count": n, "ns": 0}, "compute_infer": {"count": n, "ns": infer},
            "compute_output": {"count": n, "ns": 0}}}

    delta = stats_delta(stats(30, 9e7, 3e7, 4e7, 10), stats(10, 3e7, 1e7, 2e7, 5))
    assert delta["requests"] == 20 and delta["executions"] == 5
    assert delta["request_ms"] == pytest.approx(3.0) and delta["queue_ms"] == pytest.approx(1.0)
    assert delta["compute_ms"] == pytest.approx(1.0)
    assert stats_delta(stats(10, 1, 1, 1, 1), stats(10, 1, 1, 1, 1))["requests"] == 0
    assert instance_device({"instance_group": [{"kind": "KIND_GPU", "gpus": [1], "count": 2}]}) \
        == "KIND_GPU gpus [1] x2"


def test_bad_url_is_one_clear_line():
    for url in ("localhost:1", "no-such-host.invalid:8001"):
        backend = create_backend(BackendConfig(backend="triton", triton_url=url,
                                               triton_timeout_ms=2000))
        with pytest.raises(BackendError, match="no Triton server at .* answers") as info:
            backend.load()
        assert "\n" not in str(info.value) and url in str(info.value)


def test_tls_files_are_checked_before_connecting(tmp_path):
    cfg = BackendConfig(backend="triton", triton_root_cert=str(tmp_path / "ca.pem"))
    with pytest.raises(BackendError, match="triton_ssl is false"):
        create_backend(cfg).load()
    cfg = BackendConfig(backend="triton", triton_ssl=True, triton_root_cert=str(tmp_path / "x"))
    with pytest.raises(BackendError, match="does not exist"):
        create_backend(cfg).load()


# --- against a real server --------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The tiny demo policy as a Triton repository (CPU instances), via `vla_export triton`."""
    from mobile_vla_node.export.cli import main

    out = tmp_path_factory.mktemp("triton") / "repo"
    assert main(["triton", "--preset", "tiny", "--output", str(out), "--instance-kind", "cpu",
                 "--max-batch", "4"]) == 0
    config = (out / "mobile_vla_step" / "config.pbtxt").read_text()
    assert "max_batch_size: 4" in config and "kind: KIND_CPU" in config
    assert (out / "mobile_vla_encoder" / "1" / "model.onnx").is_file()
    return out


def test_export_cli_rejects_bad_arguments(tmp_path, capsys):
    from mobile_vla_node.export.cli import main

    assert main(["triton", "--preset", "nope", "--output", str(tmp_path / "r")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert main(["triton", "--preset", "tiny", "--output", str(tmp_path / "r"),
                     "--tensorrt", "fp16"]) == 2
        assert "--tensorrt needs TensorRT" in capsys.readouterr().err
        assert not (tmp_path / "r" / "mobile_vla_encoder").exists()


def test_tensorrt_profiles_cover_batch_text_and_window(torch_backend):
    from mobile_vla_node.export.triton_repo import trt_profiles

    spec = torch_backend.spec
    p = trt_profiles(spec, 8, 40)
    assert p["encoder"]["image"]["max"] == (8, spec.image_size, spec.image_size, 3)
    assert p["encoder"]["text_ids"]["min"] == (1, 1) and p["encoder"]["text_ids"]["max"] == (8, 40)
    assert p["step"]["features"]["max"] == (8, spec.window_size, spec.feature_dim)
    assert p["step"]["features"]["min"] == (1, 1, spec.feature_dim)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    if not (DEFAULT_ENV / ".installed").exists():
        pytest.skip(f"no local Triton server environment at {DEFAULT_ENV}: run `make triton-env`")
    with LocalTriton(repo, tmp_path_factory.mktemp("server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def torch_backend():
    backend = create_backend(BackendConfig(backend="torch", model_preset="tiny",
                                           warmup_iters=0))
    backend.load()
    return backend


def triton(url: str, **kw):
    backend = create_backend(BackendConfig(backend="triton", triton_url=url, **kw))
    backend.load()
    return backend


def frames(n: int, size: int = 224) -> list:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def run_window(backend, images, ids, window):
    """Feed frames as the runtime does (history of window - 1 features); return all actions."""
    history, out = [], []
    for image in images:
        past = np.stack(history) if history else np.zeros((0, backend.spec.feature_dim),
                                                          np.float32)
        feature, actions = backend.infer(image, ids, past)
        history = (history + [feature])[-(window - 1):]
        out.append((feature, actions))
    return out


@needs_server
def test_parity_with_torch_on_the_same_weights(server, torch_backend):
    remote = triton(server.url)
    try:
        assert remote.spec == torch_backend.spec
        ids = remote.tokenizer.encode(COMMAND)
        assert list(ids) == list(torch_backend.tokenizer.encode(COMMAND))
        images = frames(6)
        window = remote.spec.window_size
        got = run_window(remote, images, ids, window)
        want = run_window(torch_backend, images, ids, window)
        for (f1, a1), (f2, a2) in zip(got, want, strict=True):
            assert np.abs(f1 - f2).max() < 1e-4
            assert np.abs(a1 - a2).max() < 1e-4
    finally:
        remote.close()


@needs_server
def test_describe_says_what_serves_and_splits_network_from_server_time(server):
    remote = triton(server.url)
    try:
        info = remote.describe()
        assert info.name == "triton" and info.device == "triton KIND_CPU x1"
        assert info.provider.startswith("triton 2.") and info.provider.endswith("python")
        assert info.model == f"{server.url}/mobile_vla_encoder:1"
        values = info.as_values()
        assert values["triton_step_model"] == "mobile_vla_step:1"
        assert values["triton_state"] == "connected"
        ids = remote.tokenizer.encode(COMMAND)
        history = np.zeros((remote.spec.window_size - 1, remote.spec.feature_dim), np.float32)
        image = frames(1)[0]

        def server_figures():
            remote.infer(image, ids, history)
            return remote.describe().as_values()["triton_server_compute_ms"] != "n/a"

        deadline = time.monotonic() + 60
        while not server_figures():
            assert time.monotonic() < deadline, "Triton statistics never arrived"
        values = remote.describe().as_values()
        server_ms = float(values["triton_server_request_ms"])
        assert 0 < float(values["triton_server_compute_ms"]) <= server_ms
        assert float(values["triton_network_ms"]) >= 0
        assert float(values["triton_rtt_p50_ms"]) > 0
    finally:
        remote.close()


@needs_server
def test_wrong_model_name_lists_what_the_server_has(server):
    with pytest.raises(BackendError, match="model 'nope_encoder'") as info:
        triton(server.url, triton_model="nope")
    assert "mobile_vla_encoder" in str(info.value) and "\n" not in str(info.value)


def test_server_killed_mid_run_fails_fast_and_recovers(repo, tmp_path):
    if not (DEFAULT_ENV / ".installed").exists():
        pytest.skip(f"no local Triton server environment at {DEFAULT_ENV}: run `make triton-env`")
    srv = LocalTriton(repo, tmp_path).start().wait_ready()
    remote = None
    try:
        remote = triton(srv.url, triton_timeout_ms=1000, triton_reconnect_max_s=0.5)
        ids = remote.tokenizer.encode(COMMAND)
        image = frames(1)[0]
        empty = np.zeros((0, remote.spec.feature_dim), np.float32)
        remote.infer(image, ids, empty)
        srv.kill()
        with pytest.raises(TritonStepError):
            remote.infer(image, ids, empty)
        # While down, every step fails (from the server or the backoff gate), none hangs.
        for _ in range(5):
            with pytest.raises(TritonStepError):
                remote.infer(image, ids, empty)
        values = remote.describe().as_values()
        assert values["triton_state"].startswith("failing") and int(values["triton_failures"])
        srv.start().wait_ready()  # same ports, as a restarted server
        deadline = time.monotonic() + 60
        while True:
            try:
                feature, actions = remote.infer(image, ids, empty)
                break
            except TritonStepError:
                assert time.monotonic() < deadline, "no recovery after the server came back"
                time.sleep(0.1)
        assert np.isfinite(actions).all()
        values = remote.describe().as_values()
        assert values["triton_state"] == "connected" and values["triton_recoveries"] == "1"
    finally:
        if remote is not None:
            remote.close()
        srv.stop()


def test_slow_server_step_fails_within_the_timeout(repo, tmp_path):
    if not (DEFAULT_ENV / ".installed").exists():
        pytest.skip(f"no local Triton server environment at {DEFAULT_ENV}: run `make triton-env`")
    delay_ms = 4000
    srv = LocalTriton(repo, tmp_path, extra_env={"MOBILE_VLA_TRITON_DELAY_MS": delay_ms})
    srv.start().wait_ready()
    try:
        # Start-up calls (health, metadata, config) do not run the model, so they are fast.
        remote = triton(srv.url, triton_timeout_ms=300)
        ids = remote.tokenizer.encode(COMMAND)
        empty = np.zeros((0, remote.spec.feature_dim), np.float32)
        start = time.monotonic()
        with pytest.raises(TritonStepError, match="DEADLINE_EXCEEDED"):
            remote.infer(frames(1)[0], ids, empty)
        # The client gave up at its deadline, long before the server would have answered.
        assert time.monotonic() - start < delay_ms / 1e3
        remote.close()
    finally:
        srv.stop()


def test_credentials_header_is_sent(repo, tmp_path):
    if not (DEFAULT_ENV / ".installed").exists():
        pytest.skip(f"no local Triton server environment at {DEFAULT_ENV}: run `make triton-env`")
    srv = LocalTriton(repo, tmp_path, extra_args=[
        "--grpc-restricted-protocol=inference,model-config,model-repository:x-api-key=s3cret"])
    srv.start().wait_ready()
    try:
        with pytest.raises(BackendError, match="mobile_vla_encoder"):
            triton(srv.url)
        headers = Path(tmp_path / "headers")
        # Triton's own check reads the key from this header (an auth proxy would use its own).
        headers.write_text("triton-grpc-protocol-x-api-key: s3cret\n")
        remote = triton(srv.url, triton_headers_file=str(headers))
        ids = remote.tokenizer.encode(COMMAND)
        _, actions = remote.infer(frames(1)[0], ids,
                                  np.zeros((0, remote.spec.feature_dim), np.float32))
        assert actions.shape == (remote.spec.chunk, remote.spec.action_dim)
        remote.close()
    finally:
        srv.stop()


def test_fleet_benchmark_forms_batches(tmp_path):
    if not (DEFAULT_ENV / ".installed").exists():
        pytest.skip(f"no local Triton server environment at {DEFAULT_ENV}: run `make triton-env`")
    import json

    from mobile_vla_node.bench.cli import main

    out = tmp_path / "fleet.json"
    assert main(["--mode", "fleet", "--robots", "3", "--steps", "15", "--warmup", "2",
                 "--rate-hz", "0", "--runs", "triton", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    run = report["runs"]["triton"]
    assert [r["steps"] for r in run["per_robot"]] == [15, 15, 15]
    encoder = run["server"]["mobile_vla_encoder"]
    assert encoder["requests"] == 45
    assert sum(int(size) * n for size, n in encoder["batch_histogram"].items()) == 45


def test_client_accepts_exactly_what_the_exporter_writes(torch_backend):
    from mobile_vla_node.backends.triton_backend import TritonBackend, model_names
    from mobile_vla_node.export.triton_repo import serving_io

    backend = TritonBackend(BackendConfig(backend="triton"))
    backend.spec = torch_backend.spec
    io = serving_io(backend.spec)
    backend.encoder_name, backend.step_name = model_names("m")

    def config(role, batch=8):
        inputs, outputs = io[role]
        def tensors(table):
            return [{"name": n, "data_type": t, "dims": [str(d) for d in dims]}
                    for n, (t, dims) in table.items()]
        return {"max_batch_size": batch, "input": tensors(inputs), "output": tensors(outputs)}

    backend._check_io({"m_encoder": config("encoder"), "m_step": config("step")})
    bad = config("encoder")
    bad["input"][0]["dims"] = ["112", "112", "3"]
    with pytest.raises(BackendError, match="input 'image'"):
        backend._check_io({"m_encoder": bad, "m_step": config("step")})


def make_certificates(folder: Path) -> dict:
    """A throw-away CA and a localhost server certificate signed by it (openssl CLI)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make test certificates)")
    f = {k: str(folder / k) for k in ("ca.key", "ca.pem", "server.key", "server.csr",
                                       "server.pem", "ext.cnf")}
    Path(f["ext.cnf"]).write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f["ca.key"], "-out",
         f["ca.pem"], "-days", "2", "-subj", "/CN=test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f["server.key"], "-out",
         f["server.csr"], "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", f["server.csr"], "-CA", f["ca.pem"], "-CAkey", f["ca.key"],
         "-CAcreateserial", "-out", f["server.pem"], "-days", "2", "-extfile", f["ext.cnf"]]):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    return f


def client_certificate(certs: dict, folder: Path) -> tuple[str, str]:
    """A client certificate signed by the test CA (mutual TLS)."""
    import subprocess

    key, csr, pem = (str(folder / n) for n in ("client.key", "client.csr", "client.pem"))
    for cmd in (["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj",
                 "/CN=robot-1"],
                ["x509", "-req", "-in", csr, "-CA", certs["ca.pem"], "-CAkey", certs["ca.key"],
                 "-CAcreateserial", "-out", pem, "-days", "2"]):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    return pem, key


def test_tls_server(repo, tmp_path):
    if not (DEFAULT_ENV / ".installed").exists():
        pytest.skip(f"no local Triton server environment at {DEFAULT_ENV}: run `make triton-env`")
    certs = make_certificates(tmp_path)
    srv = LocalTriton(repo, tmp_path / "server", tls_root=certs["ca.pem"], extra_args=[
        "--grpc-use-ssl=true", f"--grpc-server-cert={certs['server.pem']}",
        f"--grpc-server-key={certs['server.key']}"])
    srv.start().wait_ready()
    try:
        with pytest.raises(BackendError, match="no Triton server"):
            triton(srv.url)  # plaintext against a TLS server
        remote = triton(srv.url, triton_ssl=True, triton_root_cert=certs["ca.pem"])
        assert remote.describe().as_values()["triton_tls"] == "True"
        _, actions = remote.infer(frames(1)[0], remote.tokenizer.encode(COMMAND),
                                  np.zeros((0, remote.spec.feature_dim), np.float32))
        assert np.isfinite(actions).all()
        remote.close()
    finally:
        srv.stop()


def test_mutual_tls_server(repo, tmp_path):
    if not (DEFAULT_ENV / ".installed").exists():
        pytest.skip(f"no local Triton server environment at {DEFAULT_ENV}: run `make triton-env`")
    certs = make_certificates(tmp_path)
    pem, key = client_certificate(certs, tmp_path)
    srv = LocalTriton(repo, tmp_path / "server", tls_root=certs["ca.pem"], tls_client=(pem, key),
                      extra_args=["--grpc-use-ssl-mutual=true",
                                  f"--grpc-server-cert={certs['server.pem']}",
                                  f"--grpc-server-key={certs['server.key']}",
                                  f"--grpc-root-cert={certs['ca.pem']}"])
    srv.start().wait_ready()
    try:
        with pytest.raises(BackendError, match="no Triton server"):
            triton(srv.url, triton_ssl=True, triton_root_cert=certs["ca.pem"])  # no client cert
        remote = triton(srv.url, triton_ssl=True, triton_root_cert=certs["ca.pem"],
                        triton_client_cert=pem, triton_client_key=key)
        _, actions = remote.infer(frames(1)[0], remote.tokenizer.encode(COMMAND),
                                  np.zeros((0, remote.spec.feature_dim), np.float32))
        assert np.isfinite(actions).all()
        remote.close()
    finally:
        srv.stop()


def test_classification_head_is_served_as_logits(tmp_path):
    """A team-layout classification checkpoint: Triton returns the same logits as torch."""
    if not (DEFAULT_ENV / ".installed").exists():
        pytest.skip(f"no local Triton server environment at {DEFAULT_ENV}: run `make triton-env`")
    import torch
    from team_fixtures import (
        build,
        save_lightning,
        tiny_config,
        to_team_keys,
        tokenizer_dir,
        training_json,
        write_json,
    )

    from mobile_vla_node.export.cli import main

    config = tiny_config(head="classification", head_type="MobileVLAClassificationDecoder",
                         num_classes=6)
    state = to_team_keys(build(config).state_dict(), "logits")
    state["act_head.class_weights_tensor"] = torch.tensor([1.0, 0.5, 2.0, 2.0, 1.0, 1.0])
    ckpt = save_lightning(tmp_path / "cls.ckpt", state)
    write_json(tmp_path / "cls.json", training_json("MobileVLAClassificationDecoder",
                                                    action_dim=6, classification_speed=1.0))
    assert main(["triton", "--checkpoint", str(ckpt), "--preset", "tiny", "--output",
                 str(tmp_path / "repo"), "--instance-kind", "cpu",
                 "--tokenizer-path", str(tokenizer_dir())]) == 0
    local = create_backend(BackendConfig(backend="torch", model_preset="tiny",
                                         model_path=str(ckpt), warmup_iters=0,
                                         tokenizer_path=str(tokenizer_dir())))
    local.load()
    with LocalTriton(tmp_path / "repo", tmp_path / "server") as srv:
        remote = triton(srv.url)
        assert remote.spec == local.spec and remote.spec.head == "classification"
        ids = remote.tokenizer.encode("turn left")
        history = np.random.default_rng(2).standard_normal(
            (remote.spec.window_size - 1, remote.spec.feature_dim)).astype(np.float32)
        _, logits = remote.infer(frames(1)[0], ids, history)
        _, want = local.infer(frames(1)[0], ids, history)
        assert logits.shape == (remote.spec.chunk, remote.spec.num_classes)
        assert np.abs(logits - want).max() < 1e-4
        remote.close()
