"""A real Triton Inference Server on localhost for tests, the demo and the fleet benchmark.

The ``nvidia-pytriton`` wheel ships NVIDIA's ``tritonserver`` binary with only the Python backend.
This module runs that binary directly (not PyTriton's Python API) on a copy of a
``vla_export triton`` repository in which each ``config.pbtxt`` is unchanged except
``backend: "python"`` and ``KIND_CPU``, and each version folder gets ``model.py``
(`triton_python_model`) beside the same ``model.onnx``. Model names, inputs, outputs, dynamic
batching, queue policy and ``mobile_vla.*`` parameters are the production repository's, so the
node's gRPC client code is exactly what runs against a production Triton.

The server needs its own environment (``make triton-env`` builds ``.venv-triton`` from the system
``/usr/bin/python3``): the Python-backend stub links the system ``libpython3.X.so`` (a pyenv
interpreter fails inside it), and the server side needs numpy < 2 (with numpy 2 the outputs come
back empty). This module itself needs only the standard library (and ``tritonclient`` for
`wait_ready`), so the node's environment can start and stop the server.

``python -m mobile_vla_node.export.triton_local_server --repo REPO`` serves until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ENV = ROOT / ".venv-triton"
MODEL_SOURCE = Path(__file__).with_name("triton_python_model.py")
SHM_BYTES = 4 * 1024 * 1024
# Printed by triton_python_model.py at the first execution of each model instance.
FIRST_REQUEST_TAG = "vla_local_triton first request"
_FIRST_REQUEST = re.compile(re.escape(FIRST_REQUEST_TAG)
                            + r": model=(\S+) monotonic=([0-9.]+) wall=([0-9.]+)")
# Triton's own log prefix, e.g. ``I1205 07:39:36.906492 11577 grpc_server.cc:2558]`` (UTC).
_GRPC_STARTED = re.compile(r"^I(\d\d)(\d\d) (\d\d):(\d\d):(\d\d\.\d+) .*"
                           r"Started GRPCInferenceService", re.MULTILINE)
# wait_ready polls a server that is still loading: without these the gRPC channel backs off
# 1 s, 1.6 s, 2.6 s ... between connection attempts, and "ready" is seen seconds late.
READY_POLL_S = 0.1
READY_CHANNEL_ARGS = [("grpc.initial_reconnect_backoff_ms", 100),
                      ("grpc.min_reconnect_backoff_ms", 100),
                      ("grpc.max_reconnect_backoff_ms", 200)]


class ServerError(RuntimeError):
    """The local server cannot be prepared or did not become ready."""


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_dist(env: Path) -> tuple[Path, Path, Path]:
    """(tritonserver dist folder, bundled libs folder, env python) inside a server env."""
    python = env / "bin" / "python"
    dists = sorted(env.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    if not python.exists() or not dists:
        raise ServerError(f"no Triton server environment at {str(env)!r} (nvidia-pytriton "
                          "missing); build it with `make triton-env`")
    dist = dists[-1]
    libs = dist.parents[1] / "nvidia_pytriton.libs"
    return dist, libs, python


def python_version(python: Path) -> str:
    """``3.11`` for an interpreter."""
    out = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def prepare_dist(env: Path) -> Path:
    """The tritonserver tree with the Python-backend stub of the env's Python (made once)."""
    dist, _, python = find_dist(env)
    target = env / "tritonserver"
    stub = target / "backends" / "python" / "triton_python_backend_stub"
    if stub.exists():
        return target
    version = python_version(python)
    source = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not source.exists():
        raise ServerError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    tmp = env / "tritonserver.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(dist, tmp, ignore=shutil.ignore_patterns("python_backend_stubs",
                                                             "triton_python_backend_stub"))
    shutil.copy2(source, tmp / "backends" / "python" / "triton_python_backend_stub")
    os.replace(tmp, target)
    return target


def python_config(text: str) -> str:
    """A production ``config.pbtxt`` turned into the Python-backend one (nothing else changes)."""
    text = re.sub(r'^(backend|platform): ".*"$', 'backend: "python"', text, count=1,
                  flags=re.MULTILINE)
    text = re.sub(r"kind: KIND_GPU( gpus: \[[^\]]*\])?", "kind: KIND_CPU", text)
    return text


def prepare_repo(source: Path, target: Path) -> list[str]:
    """Python-backend copy of a ``vla_export triton`` repository; returns the model names."""
    source = Path(source)
    if not source.is_dir():
        raise ServerError(f"model repository {str(source)!r} does not exist (write one with "
                          "`vla_export triton --output REPO`)")
    shutil.rmtree(target, ignore_errors=True)
    names = []
    for config in sorted(source.glob("*/config.pbtxt")):
        folder = config.parent
        text = config.read_text()
        if 'platform: "tensorrt_plan"' in text:
            continue  # no TensorRT in the wheel's server
        out = target / folder.name
        out.mkdir(parents=True)
        (out / "config.pbtxt").write_text(python_config(text))
        for version in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
            (out / version.name).mkdir()
            for file in version.glob("model.onnx*"):
                (out / version.name / file.name).symlink_to(file.resolve())
            shutil.copy(MODEL_SOURCE, out / version.name / "model.py")
        names.append(folder.name)
    if not names:
        raise ServerError(f"{str(source)!r} has no model folders with a config.pbtxt")
    return names


def parse_first_requests(text: str, after: float = 0.0) -> dict:
    """``{model: (monotonic, wall)}``: each model's earliest first-request line after ``after``."""
    out: dict = {}
    for match in _FIRST_REQUEST.finditer(text):
        model, mono, wall = match.group(1), float(match.group(2)), float(match.group(3))
        if mono > after and (model not in out or mono < out[model][0]):
            out[model] = (mono, wall)
    return out


def parse_grpc_started(text: str, now: float | None = None) -> list:
    """Wall times of Triton's "Started GRPCInferenceService" lines (the log has no year)."""
    import calendar

    now = time.time() if now is None else now
    year = time.gmtime(now).tm_year
    out = []
    for m in _GRPC_STARTED.finditer(text):
        month, day, hour, minute = (int(m.group(i)) for i in range(1, 5))
        seconds = float(m.group(5))
        t = calendar.timegm((year, month, day, hour, minute, 0)) + seconds
        if t > now + 86400:  # a December log read in January
            t = calendar.timegm((year - 1, month, day, hour, minute, 0)) + seconds
        out.append(t)
    return out


@dataclass
class LocalTriton:
    """One ``tritonserver`` process on localhost serving a repository through Python models."""

    repo: Path
    workdir: Path
    env: Path = DEFAULT_ENV
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    extra_env: dict = field(default_factory=dict)
    extra_args: list = field(default_factory=list)
    tls_root: str = ""  # PEM root for a server started with --grpc-use-ssl (wait_ready)
    tls_client: tuple = ()  # (cert, key) PEM files when the server wants mutual TLS
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def shm_prefix(self) -> str:
        """Prefix of the Python backend's /dev/shm regions (removed when the server is gone)."""
        return f"vla{os.getpid()}x{self.grpc_port}x"

    def remove_shm(self) -> None:
        """Delete this server's shared-memory regions (a killed server cannot)."""
        for path in Path("/dev/shm").glob(self.shm_prefix + "*"):
            try:
                path.unlink()
            except OSError:
                pass

    @property
    def url(self) -> str:
        """The gRPC endpoint, ``localhost:PORT``."""
        return f"localhost:{self.grpc_port}"

    def start(self) -> LocalTriton:
        """Prepare (once) and launch; the ports stay the same across `stop`/`start`."""
        server = prepare_dist(self.env)
        _, libs, python = find_dist(self.env)
        models = self.workdir / "models"
        if not models.exists():
            prepare_repo(self.repo, models)
        for name in ("grpc_port", "http_port", "metrics_port"):
            if not getattr(self, name):
                setattr(self, name, free_port())
        env = dict(os.environ)
        env.update({k: str(v) for k, v in self.extra_env.items()})
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (env.get("LD_LIBRARY_PATH"), str(libs)) if p)
        env["PATH"] = f"{python.parent}:{env['PATH']}"
        site = sorted(self.env.glob("lib/python3*/site-packages"))
        env["PYTHONPATH"] = ":".join(str(p) for p in site)
        env.pop("PYTHONHOME", None)
        self.log_path = self.log_path or self.workdir / "tritonserver.log"
        argv = [str(server / "bin" / "tritonserver"), f"--model-repository={models}",
                f"--backend-directory={server / 'backends'}",
                f"--cache-directory={server / 'caches'}",
                f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}",
                f"--metrics-port={self.metrics_port}", "--grpc-address=127.0.0.1",
                "--http-address=127.0.0.1", "--allow-metrics=false",
                "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
                f"--backend-config=python,shm-default-byte-size={SHM_BYTES}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                *self.extra_args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> LocalTriton:
        """Block until the server and all its models are ready (or raise `ServerError`)."""
        import tritonclient.grpc as grpcclient

        deadline = time.monotonic() + timeout_s
        cert, key = self.tls_client or (None, None)
        client = grpcclient.InferenceServerClient(
            self.url, ssl=bool(self.tls_root), root_certificates=self.tls_root or None,
            certificate_chain=cert, private_key=key, channel_args=READY_CHANNEL_ARGS)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(f"tritonserver exited with {self.process.returncode}; "
                                      f"log:\n{self.log_tail()}")
                try:
                    if client.is_server_ready(client_timeout=0.5):
                        return self
                except Exception:  # not listening yet
                    pass
                time.sleep(READY_POLL_S)
        finally:
            client.close()
        self.stop()
        raise ServerError(f"tritonserver not ready within {timeout_s:g} s; log:\n"
                          f"{self.log_tail()}")

    def first_requests(self, after: float = 0.0) -> dict:
        """``{model: (monotonic, wall)}`` of each model's first request executed after ``after``.

        From the lines `triton_python_model` prints: the moment a (re)started server really
        accepted and ran a request, on the machine's CLOCK_MONOTONIC (``time.monotonic()``).
        """
        return parse_first_requests(self._log_text(), after)

    def grpc_started(self) -> list:
        """Wall times (s since the epoch, UTC) at which this log's servers began serving gRPC."""
        return parse_grpc_started(self._log_text())

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server (a crash or a pulled cable, as far as the client can tell)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.remove_shm()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; also reaps the Python-backend stubs."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:  # stubs left behind by a killed server share its process group
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.remove_shm()

    def __enter__(self) -> LocalTriton:
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve a repository on localhost until interrupted."""
    parser = argparse.ArgumentParser(prog="triton_local_server",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--repo", required=True, help="repository from `vla_export triton`")
    parser.add_argument("--env", default=str(DEFAULT_ENV), help="server environment (make "
                        "triton-env)")
    parser.add_argument("--workdir", default="", help="working folder (default: a temporary one)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    args = parser.parse_args(argv)
    import tempfile

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vla_triton_"))
    server = LocalTriton(Path(args.repo), work, Path(args.env), args.grpc_port, args.http_port,
                         args.metrics_port)
    try:
        server.start().wait_ready()
        print(f"Triton serving {args.repo} on {server.url} (log {server.log_path}); Ctrl-C stops",
              flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # record it; the loop ends
        while not stop.wait(0.5) and server.process.poll() is None:
            pass
    except KeyboardInterrupt:
        pass
    except ServerError as exc:
        print(f"triton_local_server: error: {exc}", file=sys.stderr)
        return 2
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
