"""Triton Python-backend model that runs one of the repository's ONNX graphs with ONNX Runtime.

Copied as ``1/model.py`` into the local test repository by `triton_local_server` (the wheel's
``tritonserver`` has only the Python backend). It runs inside Triton's Python-backend stub, with
the server environment's numpy and onnxruntime, never in the node. The model's inputs and
outputs come from its ``config.pbtxt``, identical to the production repository's, so the client
cannot tell it from Triton's ``onnxruntime`` backend except by the backend name it reports.

Requests that Triton's dynamic batcher hands over together are stacked on axis 0 and run as one
ONNX Runtime call when their shapes agree (one group per shape otherwise), then split again.
An optional ``MOBILE_VLA_TRITON_DELAY_MS`` environment variable (tests: the slow-server case)
adds that much sleep to every execution.

The first execution of each model instance prints one ``FIRST_REQUEST_TAG`` line to the server
log with ``time.monotonic()`` (CLOCK_MONOTONIC, shared by every process on the machine) and the
wall time: the moment this server really accepted a request, which `make triton-demo` judges the
outage by (`triton_local_server.first_requests`).
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

FIRST_REQUEST_TAG = "vla_local_triton first request"  # triton_local_server.FIRST_REQUEST_TAG


class TritonPythonModel:
    """One ONNX Runtime session serving one Triton model."""

    def initialize(self, args):
        """Open ``model.onnx`` of this version with the CPU provider."""
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        threads = int(os.environ.get("MOBILE_VLA_TRITON_THREADS", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / "model.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.delay_s = float(os.environ.get("MOBILE_VLA_TRITON_DELAY_MS", "0")) / 1e3
        self.name = args["model_name"]
        self.served = False

    def execute(self, requests):
        """Run the batch; requests whose shapes differ run in separate groups."""
        if not self.served:
            self.served = True
            print(f"{FIRST_REQUEST_TAG}: model={self.name} monotonic={time.monotonic():.6f} "
                  f"wall={time.time():.6f}", flush=True)
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        arrays = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs]
                  for r in requests]
        groups = {}
        for index, feeds in enumerate(arrays):
            key = tuple(a.shape[1:] for a in feeds)
            groups.setdefault(key, []).append(index)
        responses = [None] * len(requests)
        for indices in groups.values():
            feeds = {name: np.concatenate([arrays[i][k] for i in indices], axis=0)
                     for k, name in enumerate(self.inputs)}
            results = self.session.run(self.outputs, feeds)
            offset = 0
            for i in indices:
                rows = arrays[i][0].shape[0]
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[offset:offset + rows]))
                           for name, out in zip(self.outputs, results, strict=True)]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                offset += rows
        return responses

    def finalize(self):
        """Drop the session."""
        self.session = None
