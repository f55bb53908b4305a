"""Triton Inference Server backend: the policy's two graphs served remotely over gRPC.

The server holds two models written by ``vla_export triton``: ``NAME_encoder`` (uint8 image
(B, S, S, 3) + int64 prompt ids (B, L) -> float32 feature (B, D)) and ``NAME_step`` (float32
window (B, T, D) -> float32 actions (B, chunk, action_dim), LSTM from a zero state inside the
graph). The node keeps the feature history and chunk playback exactly as for the local backends:
each step sends the new frame to the encoder, appends the returned feature to the history and
sends the window to the step model. The model spec, tokenizer and normalization come from the
encoder's ``config.pbtxt`` parameters, so the robot needs no model files.

Failure is a stop, never a stall: every step has one deadline (``triton_timeout_ms``) shared by
its two requests (gRPC client deadline plus Triton's queue timeout), and any error raises from
`infer`, which the node turns into an inference fault (zero Twist). After a failure the backend
waits (exponential backoff up to ``triton_reconnect_max_s``) before it touches the network again;
steps in between fail at once without a request. The first step that answers clears the fault.

Timing: `describe` reports the client's round trip per step and, from Triton's own statistics
(polled once a second by a background thread, off the inference path), the server's request,
queue and compute times; the difference is network and (de)serialization.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from ..core.timing import LatencyWindow
from . import require
from .base import (
    BackendError,
    BackendInfo,
    InferenceBackend,
    check_encoder_inputs,
    check_token_layout,
    check_window,
)
from .onnx_format import (
    CAMERA_FORMAT_VERSION,
    ExportFormatError,
    camera_frame,
    model_spec_from_metadata,
)

TRITON_INSTALL = "pip install 'tritonclient[grpc]' (requirements.txt pins it)"
ENCODER_SUFFIX = "_encoder"
STEP_SUFFIX = "_step"
PARAM_PREFIX = "mobile_vla."
FORMAT_VERSION = "1"
STATS_PERIOD_S = 1.0
FIRST_RETRY_S = 0.1
MAX_MESSAGE = 2**31 - 1
# Errors after which the gRPC channel is replaced (the server went away or the link broke).
CONNECTION_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL")


class TritonStepError(RuntimeError):
    """One inference step that failed or timed out (the node stops the robot and retries)."""


def _file(path: str) -> str | None:
    return str(Path(path).expanduser()) if path else None


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def output_width(spec) -> int:
    """Columns of the step model's ``actions``: class logits for a classification head."""
    if getattr(spec, "head", "regression") == "classification":
        return int(spec.num_classes)
    return int(spec.action_dim)


def model_names(prefix: str) -> tuple[str, str]:
    """``NAME`` -> (``NAME_encoder``, ``NAME_step``): the two models of one export."""
    return prefix + ENCODER_SUFFIX, prefix + STEP_SUFFIX


def read_headers(path: str) -> dict:
    """``Name: value`` lines (``#`` comments, blank lines ignored) -> gRPC metadata dict."""
    if not path:
        return {}
    file = Path(path).expanduser()
    if not file.is_file():
        raise BackendError(f"triton_headers_file {path!r} does not exist")
    headers = {}
    for number, line in enumerate(file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise BackendError(f"triton_headers_file {path!r} line {number} is not "
                               "'Name: value'")
        headers[name.strip().lower()] = value.strip()  # gRPC metadata keys are lowercase
    return headers


def error_text(exc: BaseException) -> str:
    """One line for a tritonclient / gRPC error: ``STATUS: message``."""
    status = getattr(exc, "status", None)
    message = getattr(exc, "message", None)
    code = status() if callable(status) else None
    text = message() if callable(message) else str(exc)
    text = " ".join(str(text).split())
    if code:
        return f"{str(code).replace('StatusCode.', '')}: {text}"
    return f"{type(exc).__name__}: {text}"


def error_code(exc: BaseException) -> str:
    """The gRPC status name of a tritonclient error ('' if it has none)."""
    status = getattr(exc, "status", None)
    return str(status() or "").replace("StatusCode.", "") if callable(status) else ""


def config_parameters(config: dict) -> dict:
    """``mobile_vla.*`` string parameters of a model config (JSON form) without the prefix."""
    out = {}
    for key, value in (config.get("parameters") or {}).items():
        if key.startswith(PARAM_PREFIX):
            out[key[len(PARAM_PREFIX):]] = value.get("string_value", "")
    return out


def instance_device(config: dict) -> str:
    """Where Triton runs a model's instances, from its config: ``KIND_GPU gpus [0] x1``."""
    groups = config.get("instance_group") or []
    parts = []
    for group in groups:
        kind = group.get("kind", "KIND_AUTO")
        gpus = group.get("gpus")
        count = group.get("count", 1)
        parts.append(f"{kind}" + (f" gpus {list(gpus)}" if gpus else "") + f" x{count}")
    return ", ".join(parts) or "KIND_AUTO"


def stats_delta(new: dict, old: dict | None) -> dict:
    """Per-request means (ms) between two ``model_stats`` entries (JSON form) of one model."""
    def total(stats, key):
        entry = (stats.get("inference_stats") or {}).get(key) or {}
        return int(entry.get("count", 0)), int(entry.get("ns", 0))

    out = {}
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output", "fail"):
        count, ns = total(new, key)
        if old is not None:
            old_count, old_ns = total(old, key)
            count, ns = count - old_count, ns - old_ns
        out[key] = (count, ns)
    n = out["success"][0]
    if n <= 0:
        return {"requests": 0, "failed": out["fail"][0]}
    compute = sum(out[k][1] for k in ("compute_input", "compute_infer", "compute_output"))
    return {"requests": n, "failed": out["fail"][0], "request_ms": out["success"][1] / n / 1e6,
            "queue_ms": out["queue"][1] / n / 1e6, "compute_ms": compute / n / 1e6,
            "executions": int(new.get("execution_count", 0)) - (
                int(old.get("execution_count", 0)) if old else 0)}


class TritonBackend(InferenceBackend):
    """Runs the encoder and step models on a Triton Inference Server over gRPC."""

    name = "triton"

    def __init__(self, config):
        super().__init__(config)
        self._lock = threading.Lock()
        self.camera = None   # a camera-input model's preprocess record (set by load)
        self._client = None
        self._stats_client = None
        self._stats_thread = None
        self._closed = threading.Event()
        self.rtt = LatencyWindow(200)
        self.network = {"failures": 0, "consecutive": 0, "recoveries": 0, "last_error": "",
                        "down_since": None, "retry_at": 0.0, "reconnects": 0}
        self.server = {}
        self._interval = {"steps": 0, "step_ms": 0.0}

    # -- start-up ------------------------------------------------------------------------------
    def load(self) -> None:
        """Connect, check both models are ready, read the spec and tokenizer from the server."""
        self.grpc = require("tritonclient.grpc", TRITON_INSTALL)
        self.utils = require("tritonclient.utils", TRITON_INSTALL)
        cfg = self.config
        self.timeout_s = cfg.triton_timeout_ms / 1e3
        self.version = cfg.triton_model_version
        self.encoder_name, self.step_name = model_names(cfg.triton_model)
        self.headers = read_headers(cfg.triton_headers_file) or None
        self._check_tls_files()
        where = f"Triton server at {cfg.triton_url!r}"
        client = self._connect()
        try:
            live = client.is_server_live(headers=self.headers, client_timeout=self.timeout_s)
            server = client.get_server_metadata(headers=self.headers, as_json=True,
                                                client_timeout=self.timeout_s)
        except Exception as exc:  # InferenceServerException, grpc errors, bad URL
            client.close()
            raise BackendError(f"backend triton: no {where} answers within "
                               f"{cfg.triton_timeout_ms:g} ms ({error_text(exc)}); start the "
                               "server (docs/TRITON.md) or fix triton_url") from exc
        if not live:
            client.close()
            raise BackendError(f"backend triton: {where} reports it is not live")
        self._client = client
        try:
            configs = {name: self._model_config(name, where) for name in (self.encoder_name,
                                                                          self.step_name)}
            params = config_parameters(configs[self.encoder_name])
            self._read_spec(params)
            self._check_io(configs)
            self._server_info(server, configs, params)
        except BackendError:
            self.close()
            raise
        self._stats_client = self._connect()
        try:  # the baseline, so that the first interval covers warm-up and the first steps
            baseline = self.server_statistics(self._stats_client)
        except Exception:  # statistics are diagnostics only; the thread retries
            baseline = None
        self._stats_thread = threading.Thread(target=self._stats_loop, args=(baseline,),
                                              name="triton_stats", daemon=True)
        self._stats_thread.start()

    def _check_tls_files(self) -> None:
        cfg = self.config
        for name in ("triton_root_cert", "triton_client_cert", "triton_client_key"):
            path = getattr(cfg, name)
            if path and not cfg.triton_ssl:
                raise BackendError(f"{name}={path!r} is set but triton_ssl is false")
            if path and not Path(path).expanduser().is_file():
                raise BackendError(f"{name} {path!r} does not exist")
        if bool(cfg.triton_client_cert) != bool(cfg.triton_client_key):
            raise BackendError("mutual TLS needs both triton_client_cert and triton_client_key")

    def _connect(self):
        """A new gRPC client; its channel retries connections quickly (bounded backoff)."""
        cfg = self.config
        backoff_ms = int(cfg.triton_reconnect_max_s * 1e3)
        channel_args = [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.initial_reconnect_backoff_ms", min(100, backoff_ms)),
            ("grpc.min_reconnect_backoff_ms", min(100, backoff_ms)),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ]
        try:
            return self.grpc.InferenceServerClient(
                url=cfg.triton_url, ssl=cfg.triton_ssl,
                root_certificates=_file(cfg.triton_root_cert),
                private_key=_file(cfg.triton_client_key),
                certificate_chain=_file(cfg.triton_client_cert), channel_args=channel_args)
        except Exception as exc:  # malformed URL, unreadable certificate
            raise BackendError(f"backend triton: cannot create a gRPC client for "
                               f"{cfg.triton_url!r}: {error_text(exc)}") from exc

    def _model_config(self, name: str, where: str) -> dict:
        client, kw = self._client, {"headers": self.headers, "client_timeout": self.timeout_s}
        version = f" version {self.version}" if self.version else ""
        try:
            ready = client.is_model_ready(name, self.version, **kw)
        except Exception as exc:
            ready, reason = False, error_text(exc)
        else:
            reason = "not ready"
        if not ready:
            try:
                index = client.get_model_repository_index(as_json=True, **kw)
                models = sorted({f"{m['name']}" + (f" v{m['version']}" if m.get("version")
                                                   else "") + f" ({m.get('state', '?')})"
                                 for m in index.get("models", [])})
            except Exception as exc:
                models = [f"(index unavailable: {error_text(exc)})"]
            raise BackendError(f"backend triton: model {name!r}{version} on {where} is {reason}; "
                               f"the server has: {', '.join(models) or 'no models'} (triton_model"
                               f"={self.config.triton_model!r} names NAME_encoder + NAME_step, "
                               "written by `vla_export triton`)")
        try:
            return client.get_model_config(name, self.version, as_json=True, **kw)["config"]
        except Exception as exc:
            raise BackendError(f"backend triton: cannot read the config of {name!r} from "
                               f"{where}: {error_text(exc)}") from exc

    def _read_spec(self, params: dict) -> None:
        from ..model.tokenizer import PromptTokenizer

        name = self.encoder_name
        self.camera = None
        if params.get("format") == CAMERA_FORMAT_VERSION:
            # a camera-input encoder (vla_export triton --camera-size): it resizes in its graph
            try:
                self.camera = json.loads(params["preprocess"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BackendError(f"backend triton: model {name!r} is a camera-input export "
                                   f"without a readable {PARAM_PREFIX}preprocess parameter "
                                   f"({exc})") from exc
            self.preprocesses_on_device = True
        elif params.get("format") != FORMAT_VERSION:
            raise BackendError(f"backend triton: model {name!r} is not a mobile_vla export of "
                               f"format {FORMAT_VERSION} (config.pbtxt parameter "
                               f"{PARAM_PREFIX}format is {params.get('format')!r}); write the "
                               "repository with `vla_export triton`")
        try:
            self.spec = model_spec_from_metadata({"model_spec": json.loads(params["model_spec"])})
            check_token_layout(self.config, self.spec, "the served model")
            self.tokenizer = PromptTokenizer.from_json(params["tokenizer"])
            self.export = json.loads(params.get("export") or "{}")
            self.policy_config = json.loads(params.get("policy_config") or "{}")
        except (KeyError, TypeError, ValueError, ExportFormatError) as exc:
            raise BackendError(f"backend triton: model {name!r} has unusable {PARAM_PREFIX}* "
                               f"parameters ({type(exc).__name__}: {exc})") from exc
        self.max_text_len = self.export.get("max_text_len")

    def _check_io(self, configs: dict) -> None:
        s = self.spec
        image = [s.image_size, s.image_size, 3]
        if self.camera is not None:
            image = [int(self.camera["camera_size"][1]), int(self.camera["camera_size"][0]), 3]
        want = {
            self.encoder_name: ({"image": ("TYPE_UINT8", image),
                                 "text_ids": ("TYPE_INT64", [-1])},
                                {"feature": ("TYPE_FP32", [s.feature_dim])}),
            self.step_name: ({"features": ("TYPE_FP32", [-1, s.feature_dim])},
                             {"actions": ("TYPE_FP32", [s.chunk, output_width(s)])}),
        }
        self.batched = {}
        for name, (inputs, outputs) in want.items():
            config = configs[name]
            batched = int(config.get("max_batch_size", 0)) > 0
            self.batched[name] = batched
            for kind, expected in (("input", inputs), ("output", outputs)):
                got = {t["name"]: (t["data_type"], [int(d) for d in t["dims"]])
                       for t in config.get(kind, [])}
                for tensor, (dtype, dims) in expected.items():
                    dims = dims if batched else [1, *dims]
                    if got.get(tensor) != (dtype, dims):
                        raise BackendError(f"backend triton: model {name!r} {kind} {tensor!r} is "
                                           f"{got.get(tensor)}; this node needs {(dtype, dims)} "
                                           f"(re-export with `vla_export triton`)")

    def _server_info(self, server: dict, configs: dict, params: dict) -> None:
        cfg = self.config
        enc, step = configs[self.encoder_name], configs[self.step_name]
        platform = enc.get("backend") or enc.get("platform") or "?"
        step_platform = step.get("backend") or step.get("platform") or "?"
        versions = {}
        for name in (self.encoder_name, self.step_name):
            try:
                meta = self._client.get_model_metadata(name, self.version, headers=self.headers,
                                                       as_json=True,
                                                       client_timeout=self.timeout_s)
                versions[name] = ",".join(meta.get("versions", [])) or "?"
            except Exception as exc:
                versions[name] = f"? ({error_text(exc)})"
        device = instance_device(enc)
        if instance_device(step) != device:
            device = f"encoder {device}, step {instance_device(step)}"
        provider = platform if platform == step_platform else f"{platform} / {step_platform}"
        self.server_version = server.get("version", "?")
        self._base_info = dict(
            name=self.name, device=f"triton {device}",
            precision=self.export.get("precision", "fp32"),
            provider=f"triton {self.server_version} {provider}",
            model=f"{cfg.triton_url}/{self.encoder_name}:{versions[self.encoder_name]}",
        )
        self._base_extra = {
            "triton_url": cfg.triton_url, "triton_server": f"{server.get('name', 'triton')} "
            f"{self.server_version}", "triton_step_model": f"{self.step_name}:"
            f"{versions[self.step_name]}", "triton_tls": cfg.triton_ssl,
            "triton_timeout_ms": cfg.triton_timeout_ms,
            "triton_max_batch": f"{enc.get('max_batch_size', 0)}/{step.get('max_batch_size', 0)}",
            "source": (self.export.get("source") or {}).get("weights", ""),
        }
        self.info = BackendInfo(**self._base_info, extra=dict(self._base_extra))

    # -- inference -----------------------------------------------------------------------------
    def _gate(self) -> None:
        """Fail at once while waiting out the reconnection backoff (no request is sent)."""
        with self._lock:
            net = self.network
            if net["down_since"] is None:
                return
            wait = net["retry_at"] - time.monotonic()
            if wait <= 0:
                return
            down = time.monotonic() - net["down_since"]
            message = (f"Triton server {self.config.triton_url} failing for {down:.1f} s "
                       f"({net['last_error']}); next attempt in {wait:.2f} s")
        raise TritonStepError(message)

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            net = self.network
            now = time.monotonic()
            net["failures"] += 1
            net["consecutive"] += 1
            net["last_error"] = error_text(exc)
            if net["down_since"] is None:
                net["down_since"] = now
            delay = min(FIRST_RETRY_S * 2 ** (net["consecutive"] - 1),
                        self.config.triton_reconnect_max_s)
            net["retry_at"] = now + delay
            reconnect = error_code(exc) in CONNECTION_CODES
        if reconnect:
            # A fresh channel: no half-open connection, no pending stream from the lost server.
            old = self._client
            try:
                self._client = self._connect()
                with self._lock:
                    self.network["reconnects"] += 1
            except BackendError:
                return
            try:
                old.close()
            except Exception:  # closing a broken channel may raise; it is being dropped anyway
                pass

    def _succeeded(self, step_ms: float) -> None:
        with self._lock:
            net = self.network
            if net["down_since"] is not None:
                net["recoveries"] += 1
            net["consecutive"], net["down_since"], net["retry_at"] = 0, None, 0.0
            self.rtt.add(step_ms)
            self._interval["steps"] += 1
            self._interval["step_ms"] += step_ms

    def _request(self, model: str, inputs: dict, output: str, deadline: float) -> np.ndarray:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TritonStepError(f"step deadline of {self.config.triton_timeout_ms:g} ms spent "
                                  f"before the {model!r} request")
        tensors = []
        for name, array in inputs.items():
            tensor = self.grpc.InferInput(name, list(array.shape),
                                          self.utils.np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = self._client.infer(
            model, tensors, model_version=self.version,
            outputs=[self.grpc.InferRequestedOutput(output)], headers=self.headers,
            client_timeout=remaining, timeout=max(int(remaining * 1e6), 1))
        out = result.as_numpy(output)
        if out is None:
            raise TritonStepError(f"model {model!r} returned no {output!r} output")
        return out

    def _encode(self, image: np.ndarray, text_ids: np.ndarray, deadline: float) -> np.ndarray:
        if self.camera is not None:   # the camera frame, in the export's camera order
            image = camera_frame(self.camera, image)
            ids = np.ascontiguousarray(text_ids, dtype=np.int64).reshape(1, -1)
            if self.max_text_len is not None and ids.shape[1] > self.max_text_len:
                raise ValueError(f"prompt has {ids.shape[1]} ids; the served encoder accepts at "
                                 f"most {self.max_text_len} (its positional table is fixed)")
        else:
            ids = check_encoder_inputs(self.spec, image, text_ids, self.max_text_len,
                                       "served encoder")
        out = self._request(self.encoder_name, {"image": np.ascontiguousarray(image)[None],
                                                "text_ids": ids}, "feature", deadline)
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def _decode(self, features: np.ndarray, deadline: float) -> np.ndarray:
        window = check_window(self.spec, features)
        out = self._request(self.step_name, {"features": window}, "actions", deadline)
        return np.asarray(out, dtype=np.float32).reshape(self.spec.chunk, output_width(self.spec))

    def _guarded(self, work):
        """Run ``work(deadline)`` as one step: backoff gate, deadline, failure bookkeeping."""
        self._gate()
        start = time.monotonic()
        try:
            out = work(start + self.timeout_s)
        except ValueError:
            raise  # bad input from the caller, not a server fault
        except TritonStepError as exc:
            self._failed(exc)
            raise
        except Exception as exc:  # InferenceServerException and gRPC errors
            self._failed(exc)
            raise TritonStepError(f"Triton step failed: {error_text(exc)}") from exc
        self._succeeded((time.monotonic() - start) * 1e3)
        return out

    def infer(self, image: np.ndarray, text_ids: np.ndarray,
              history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encoder request, then step request, within one ``triton_timeout_ms`` deadline."""
        def work(deadline):
            feature = self._encode(image, text_ids, deadline)
            window = feature[None]
            if len(history):
                window = np.concatenate([np.asarray(history, np.float32), window], axis=0)
            return feature, self._decode(window, deadline)

        return self._guarded(work)

    def encode(self, image: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
        """uint8 (S, S, 3) + int64 (L,) -> float32 (D,) from the server's encoder model.

        A camera-input model takes the camera frame (H, W, 3) in its camera order instead.
        """
        return self._guarded(lambda deadline: self._encode(image, text_ids, deadline))

    def decode(self, features: np.ndarray) -> np.ndarray:
        """float32 (T, D) -> float32 (chunk, action_dim | num_classes) from the step model."""
        return self._guarded(lambda deadline: self._decode(features, deadline))

    # -- statistics ----------------------------------------------------------------------------
    def server_statistics(self, client=None, timeout_s: float | None = None) -> dict:
        """Triton's cumulative statistics of both models: ``{model: model_stats entry}``."""
        client = client or self._client
        out = {}
        for name in (self.encoder_name, self.step_name):
            stats = client.get_inference_statistics(
                name, self.version, headers=self.headers, as_json=True,
                client_timeout=timeout_s or self.timeout_s)
            entries = stats.get("model_stats") or []
            out[name] = entries[-1] if entries else {}
        return out

    def _stats_loop(self, previous: dict | None) -> None:
        while not self._closed.wait(STATS_PERIOD_S):
            try:
                current = self.server_statistics(self._stats_client,
                                                 min(self.timeout_s, STATS_PERIOD_S))
            except Exception as exc:  # server down: keep the last figures, report the error
                with self._lock:
                    self.server["stats_error"] = error_text(exc)
                continue
            with self._lock:
                steps, step_ms = self._interval["steps"], self._interval["step_ms"]
                self._interval = {"steps": 0, "step_ms": 0.0}
            if previous is not None:
                deltas = {name: stats_delta(current[name], previous.get(name))
                          for name in current}
                self._update_server(deltas, steps, step_ms)
            previous = current

    def _update_server(self, deltas: dict, steps: int, step_ms: float) -> None:
        enc, step = deltas[self.encoder_name], deltas[self.step_name]
        if not (enc.get("requests") and step.get("requests")):
            with self._lock:  # an idle interval keeps the last figures
                self.server["stats_error"] = ""
            return
        figures = {key: enc[key] + step[key] for key in ("request_ms", "queue_ms", "compute_ms")}
        figures["server_requests"] = enc["requests"] + step["requests"]
        figures["avg_batch"] = (enc["requests"] / enc["executions"] if enc.get("executions")
                                else 0.0)
        if steps:
            figures["client_ms"] = step_ms / steps
            figures["network_ms"] = max(figures["client_ms"] - figures["request_ms"], 0.0)
        with self._lock:
            self.server = figures

    def describe(self) -> BackendInfo:
        """What serves (server version, models, device) plus live round-trip/server figures."""
        if self.info is None:
            raise BackendError(f"backend {self.name!r} is not loaded")
        with self._lock:
            net, server = dict(self.network), dict(self.server)
            rtt = self.rtt.summary()
        extra = dict(self._base_extra)
        extra["triton_rtt_p50_ms"] = _fmt(rtt["p50"]) if rtt else "n/a"
        extra["triton_rtt_p99_ms"] = _fmt(rtt["p99"]) if rtt else "n/a"
        for key in ("request_ms", "queue_ms", "compute_ms", "network_ms", "avg_batch"):
            extra[f"triton_server_{key}" if key != "network_ms" else "triton_network_ms"] = (
                _fmt(server[key]) if key in server else "n/a")
        down = net["down_since"] is not None
        extra["triton_state"] = (f"failing for {time.monotonic() - net['down_since']:.1f} s"
                                 if down else "connected")
        extra["triton_failures"] = net["failures"]
        extra["triton_recoveries"] = net["recoveries"]
        extra["triton_last_error"] = net["last_error"]
        if server.get("stats_error"):
            extra["triton_stats_error"] = server["stats_error"]
        warnings = [f"Triton server failing: {net['last_error']}"] if down else []
        return BackendInfo(**self._base_info, warnings=warnings, extra=extra)

    def close(self) -> None:
        """Stop the statistics thread and close both gRPC channels."""
        self._closed.set()
        if self._stats_thread is not None:
            self._stats_thread.join(timeout=STATS_PERIOD_S + self.timeout_s + 1.0)
        for client in (self._client, self._stats_client):
            if client is not None:
                try:
                    client.close()
                except Exception:  # a channel to a dead server may fail to close cleanly
                    pass
        self._client = self._stats_client = None
