"""Physical limits for `vla_bench`: parameter and FLOP counts per step, device specs, roofline.

Counts come from the `PolicyConfig` alone (no weights are built), so the full-size presets cost
nothing to count; `count_parameters` is tested against ``sum(p.numel())`` of the built model.

FLOPs of one runtime step (one camera frame: encode it, then decode the whole window), counting a
multiply-add as 2 FLOPs and only matrix products (layer norms, softmax, activations, biases and
the image normalization are O(tokens x width) and below 1 % at every preset)::

    Vision tower (CLIP ViT, image S, patch p):  P = (S/p)^2 patches, N = P + 1 tokens (CLS)
        patch embedding        2 * P * (3 p^2) * Dv
        per layer (Lv layers)  8 N Dv^2            (q, k, v, out projections)
                             + 4 N^2 Dv            (Q K^T and attention x V)
                             + 4 N Dv Fv           (fc1, fc2)
    Image-to-text projection (Q = latent_query_num latent queries attend over N + Q keys)
        dense                  2 N Dv Dt
        q, out                 4 Q Dt^2
        k, v                   4 (N + Q) Dt^2
        scores, x V            4 Q (N + Q) Dt
    Text transformer over n = 2 (<s> <image>) + Q + 1 (</image>) + L (prompt ids) + 1 (action)
        per layer (Lt layers)  8 n Dt^2 + 4 n^2 Dt + 4 n Dt F
    LSTM (layers l = 0..K-1, hidden H, input D_0 = Dt, D_l = H) over the window of T frames
        T * sum_l 8 H (D_l + H)     (4 gates, input and recurrent products)
    MLP head on the last LSTM output
        2 * sum over linear layers of (in * out)

Bytes: each weight must be read at least once per step, at the precision the backend runs. Of the
token-embedding table only the n - Q rows of the prompt are read, so the streamed bytes are the
parameter bytes minus the unread rows. The lower bound on the step time is
``max(bytes / bandwidth, flops / peak)``: a roofline that ignores activations, launch overhead and
the host, so the measured/limit ratio says how far a backend is from the hardware, not a target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
# The sequence around the prompt: <s> <image> | latent image tokens | </image> | prompt | action.
FIXED_TEXT_TOKENS = 4


@dataclass(frozen=True)
class DeviceSpec:
    """Peak memory bandwidth (GB/s) and dense matrix peak (TFLOPS) per precision."""

    name: str
    bandwidth_gbs: float
    tflops: dict
    source: str

    def peak_tflops(self, precision: str) -> float | None:
        """Dense peak at ``precision`` (int8 counts as fp16 when no int8 figure is known)."""
        if precision in self.tflops:
            return self.tflops[precision]
        return self.tflops.get("fp16") if precision == "int8" else None


# Dense (no 2:4 sparsity) peaks. fp32 is the non-tensor FP32 rate: PyTorch keeps TF32 off for
# matmuls by default, so fp32 runs at that rate.
SPECS = {
    # NVIDIA Jetson Orin NX 16GB module datasheet: 102.4 GB/s LPDDR5, 1024 CUDA cores and 32
    # tensor cores at up to 918 MHz (fp32: 1024 x 2 x 0.918 GHz = 1.88 TFLOPS), 100 sparse INT8
    # TOPS for the module of which ~50 are the GPU's. ASSUMPTION: 25 TFLOPS fp16/bf16 is the
    # GPU's 50 sparse INT8 TOPS halved; dense fp16 may be as low as ~12.5, so this bound is on the
    # optimistic side (a lower bound stays a lower bound with a higher peak).
    "orin-nx-16gb": DeviceSpec("orin-nx-16gb", 102.4, {"fp16": 25.0, "bf16": 25.0, "fp32": 1.88},
                               "Jetson Orin NX 16GB datasheet; fp16 peak assumed (see source)"),
    # NVIDIA H100 SXM5 datasheet: 3.35 TB/s HBM3, 989 dense fp16/bf16 tensor TFLOPS, 67 fp32.
    "h100-sxm": DeviceSpec("h100-sxm", 3350.0, {"fp16": 989.0, "bf16": 989.0, "fp32": 67.0},
                           "NVIDIA H100 SXM datasheet (dense)"),
    # NVIDIA H200 SXM datasheet: 4.8 TB/s HBM3e; same compute as H100 SXM.
    "h200": DeviceSpec("h200", 4800.0, {"fp16": 989.0, "bf16": 989.0, "fp32": 67.0},
                       "NVIDIA H200 datasheet (dense)"),
    # NVIDIA RTX A5000 datasheet: 768 GB/s GDDR6, 222.2 sparse tensor fp16 TFLOPS -> 111.1
    # dense, 27.8 fp32.
    "a5000": DeviceSpec("a5000", 768.0, {"fp16": 111.1, "bf16": 111.1, "fp32": 27.8},
                        "NVIDIA RTX A5000 datasheet (dense = sparse / 2)"),
}
# Substrings of the CUDA device name that identify a named spec. "H100 80GB HBM3" is the SXM5
# part (PCIe and NVL parts have less bandwidth and are not matched). Every Jetson Orin reports
# "Orin", so Orin is matched only when the device tree names an Orin NX module.
GPU_NAME_KEYS = (("H100 80GB HBM3", "h100-sxm"), ("H200", "h200"), ("A5000", "a5000"))
JETSON_MODEL_FILE = "/proc/device-tree/model"


@dataclass
class StepCount:
    """Parameters, embedding rows and FLOPs of one step, per component."""

    params: dict = field(default_factory=dict)
    flops: dict = field(default_factory=dict)
    text_tokens: int = 0
    embedding_params: int = 0
    embedding_rows_read: int = 0
    embed_dim: int = 0

    @property
    def total_params(self) -> int:
        """All parameters."""
        return sum(self.params.values())

    @property
    def total_flops(self) -> int:
        """All FLOPs of one step."""
        return sum(self.flops.values())

    def weight_bytes(self, precision: str) -> int:
        """Bytes of all parameters at ``precision``."""
        return self.total_params * BYTES_PER_ELEMENT[precision]

    def streamed_bytes(self, precision: str) -> int:
        """Bytes a step must read: every weight except the unread token-embedding rows."""
        unread = self.embedding_params - self.embedding_rows_read * self.embed_dim
        return (self.total_params - unread) * BYTES_PER_ELEMENT[precision]


def lstm_params(in_features: int, hidden: int, layers: int) -> int:
    """torch.nn.LSTM parameters: per layer 4H(in + H) weights and two 4H biases."""
    total = 0
    for layer in range(layers):
        width = in_features if layer == 0 else hidden
        total += 4 * hidden * (width + hidden) + 8 * hidden
    return total


def lstm_flops(in_features: int, hidden: int, layers: int, steps: int) -> int:
    """FLOPs of the LSTM's gate products over ``steps`` time steps."""
    per_step = sum(8 * hidden * ((in_features if layer == 0 else hidden) + hidden)
                   for layer in range(layers))
    return steps * per_step


def mlp_widths(in_features: int, hidden: list, out_features: int) -> list[tuple[int, int]]:
    """(in, out) of every linear layer of the tanh MLP head."""
    widths = [in_features, *[int(h) for h in hidden], out_features]
    return list(zip(widths[:-1], widths[1:], strict=True))


def mlp_params(in_features: int, hidden: list, out_features: int) -> int:
    """Weights and biases of the MLP head."""
    return sum(i * o + o for i, o in mlp_widths(in_features, hidden, out_features))


def mlp_flops(in_features: int, hidden: list, out_features: int) -> int:
    """FLOPs of the MLP head on one vector."""
    return sum(2 * i * o for i, o in mlp_widths(in_features, hidden, out_features))


def _attention_block_params(dim: int) -> int:
    return 4 * (dim * dim + dim)


def count_step(config, prompt_len: int) -> StepCount:
    """Parameters and FLOPs of one step of ``config`` (a `PolicyConfig`) for ``prompt_len`` ids."""
    vis, txt = config.backbone["vision_config"], config.backbone["text_config"]
    dv, fv, lv = vis["hidden_size"], vis["intermediate_size"], vis["num_hidden_layers"]
    patch, size = vis["patch_size"], vis["image_size"]
    dt, ft, lt, vocab = txt["embed_dim"], txt["ffn_dim"], txt["layers"], txt["vocab_size"]
    q = config.backbone["latent_query_num"]
    p = (size // patch) ** 2
    n_img = p + 1
    n = FIXED_TEXT_TOKENS + q + int(prompt_len)
    h, k = config.lstm_hidden, config.lstm_layers
    out = config.fwd_pred_next_n * config.action_dim
    c = StepCount(text_tokens=n, embedding_params=vocab * dt, embedding_rows_read=n - q - 1,
                  embed_dim=dt)
    # class embedding + patch conv (no bias) + positions + pre/post layer norms
    vision_layer = _attention_block_params(dv) + 2 * dv + dv * fv + fv + fv * dv + dv + 2 * dv
    # class embedding + patch conv (no bias) + positions + pre/post layer norms
    vision_layer = _attention_block_params(dv) + 2 * dv + dv * fv + fv + fv * dv + dv + 2 * dv
    c.params["vision"] = dv + 3 * patch * patch * dv + n_img * dv + 4 * dv + lv * vision_layer
    c.flops["vision_linear"] = 2 * p * 3 * patch * patch * dv + lv * (
        8 * n_img * dv * dv + 4 * n_img * dv * fv)
    c.flops["vision_attention"] = lv * 4 * n_img * n_img * dv
    c.params["projection"] = q * dt + dv * dt + dt + _attention_block_params(dt)
    c.flops["projection_linear"] = (2 * n_img * dv * dt + 4 * q * dt * dt
                                    + 4 * (n_img + q) * dt * dt)
    c.flops["projection_attention"] = 4 * q * (n_img + q) * dt
    # attention (+ inner_attn_ln) + its layer norm + ffn (+ ffn_layernorm) + final layer norm
    text_layer = (_attention_block_params(dt) + 2 * dt + 2 * dt + dt * ft + ft + ft * dt + dt
                  + 2 * ft + 2 * dt)
    c.params["text"] = vocab * dt + lt * text_layer + 2 * dt
    c.flops["text_linear"] = lt * (8 * n * dt * dt + 4 * n * dt * ft)
    c.flops["text_attention"] = lt * 4 * n * n * dt
    c.params["action_token"] = dt
    c.params["lstm"] = lstm_params(dt, h, k)
    c.flops["lstm"] = lstm_flops(dt, h, k, config.window_size)
    c.params["mlp"] = mlp_params(h, config.mlp_hidden, out)
    c.flops["mlp"] = mlp_flops(h, config.mlp_hidden, out)
    return c


def count_parameters(config) -> int:
    """All parameters of the policy ``config`` describes (prompt length does not matter)."""
    return count_step(config, 1).total_params


def bound_ms(flops: int, nbytes: int, bandwidth_gbs: float | None,
             tflops: float | None) -> dict:
    """Roofline lower bound in ms: memory time, compute time and the larger of the two."""
    mem = nbytes / (bandwidth_gbs * 1e9) * 1e3 if bandwidth_gbs else None
    comp = flops / (tflops * 1e12) * 1e3 if tflops else None
    known = [v for v in (mem, comp) if v is not None]
    return {"memory_ms": mem, "compute_ms": comp, "bound_ms": max(known) if known else None,
            "limited_by": (None if not known else
                           "memory" if comp is None or (mem is not None and mem >= comp)
                           else "compute")}


def measure_memcpy_gbs(mbytes: int = 128, repeats: int = 5) -> float:
    """Best-of-``repeats`` numpy copy bandwidth in GB/s, counting read + write bytes (1 thread)."""
    import numpy as np

    src = np.ones(mbytes * 1024 * 1024 // 8, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def measure_gemm_tflops(n: int = 1536, repeats: int = 3) -> float:
    """Best-of-``repeats`` torch fp32 CPU matmul rate (n x n, all threads), in TFLOPS.

    Only fp32 is measured: CPUs without AVX512-FP16/AMX run fp16/bf16 at best at the fp32 rate
    (torch's fp16 CPU GEMM is far slower still), so the fp32 rate is the compute ceiling used
    for every precision on the CPU.
    """
    import torch

    a = torch.randn(n, n)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


def spec_for_gpu(gpu_name: str, jetson_model: str | None = None) -> str | None:
    """The named spec of a CUDA device name (None if unknown: give --bandwidth-gbs/--tflops)."""
    for key, spec in GPU_NAME_KEYS:
        if key.lower() in gpu_name.lower():
            return spec
    if "orin" in gpu_name.lower():
        if jetson_model is None:
            try:
                jetson_model = Path(JETSON_MODEL_FILE).read_text(errors="replace")
            except OSError:
                jetson_model = ""
        return "orin-nx-16gb" if "orin nx" in jetson_model.lower() else None
    return None


def parse_spec_names(text: str) -> list[str]:
    """Comma-separated spec names; unknown names raise ValueError listing the known ones."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SPECS]
    if unknown:
        raise ValueError(f"unknown --device-spec {unknown}; known: {sorted(SPECS)}")
    return names


def limits_table(count: StepCount, precision: str, specs: list[DeviceSpec]) -> list[dict]:
    """One roofline row per spec: bytes, FLOPs and the lower bound on step time."""
    nbytes = count.streamed_bytes(precision)
    rows = []
    for spec in specs:
        row = {"spec": spec.name, "bandwidth_gbs": spec.bandwidth_gbs,
               "tflops": spec.peak_tflops(precision), "source": spec.source,
               "bytes": nbytes, "flops": count.total_flops}
        row.update(bound_ms(count.total_flops, nbytes, spec.bandwidth_gbs,
                            spec.peak_tflops(precision)))
        rows.append(row)
    return rows
