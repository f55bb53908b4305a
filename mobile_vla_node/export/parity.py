"""Numerical parity between two backends (an export against the PyTorch reference).

Both backends run ``infer(image, text_ids, history)`` on the same cases; the frame ``feature`` and
the ``actions`` are compared. Cases mix random images, prompts of several lengths and window sizes
1..window_size (exercising the exported graphs' dynamic axes), plus real frames when a bag or an
image folder is given. Histories are the reference backend's own features of other cases, so the
candidate decodes exactly the window the reference decodes except for its own newest feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends.base import InferenceBackend

# The one parity tolerance table: max abs difference of ``feature`` and ``actions`` to the fp32
# reference, by the candidate's precision. TensorRT fp32 may run TF32 and other fused kernels,
# so its fp32 bound is looser. `vla_export onnx|verify|tensorrt` and `vla_bench` default to it.
ATOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2, "int8": 5e-2}
TENSORRT_ATOL = {**ATOL, "fp32": 1e-3}
OUTPUTS = ("feature", "actions")


def default_atol(precision: str, backend: str = "onnx") -> float:
    """The tolerance of ``backend`` (onnx, tensorrt, torch...) at ``precision`` (`ATOL`)."""
    table = TENSORRT_ATOL if backend == "tensorrt" else ATOL
    if precision not in table:
        raise ValueError(f"no parity tolerance for precision {precision!r}; known: "
                         f"{sorted(table)}")
    return table[precision]
COMMANDS = (
    "go to the red box",
    "stop",
    "turn left",
    "move forward slowly and then turn right towards the blue door",
    "follow the person",
    "navigate around the chair to the table in the middle",
    "rotate clockwise",
    "approach the green ball",
)


@dataclass
class ParityCase:
    """One input: a model-ready image, prompt ids and the earlier window features."""

    image: np.ndarray  # uint8 (S, S, 3)
    text_ids: np.ndarray  # int64 (L,)
    history: np.ndarray  # float32 (T-1, D)
    # camera-input candidates: the camera frame ``image`` was resized from (PIL, exactly) and
    # whether its channels differ from the model's ("bgr": swap), passed to infer_raw
    frame: np.ndarray | None = None
    swap: str = "rgb"


@dataclass
class ParityResult:
    """Agreement on one output over all cases (cosine: the worst case's)."""

    output: str
    max_abs: float
    mean_abs: float
    cosine: float
    atol: float
    passed: bool

    def as_dict(self) -> dict:
        """JSON-serializable values."""
        return {"output": self.output, "max_abs": _json_float(self.max_abs),
                "mean_abs": _json_float(self.mean_abs), "cosine": _json_float(self.cosine),
                "atol": self.atol, "passed": self.passed}


def _json_float(value: float) -> float | None:
    """Non-finite figures become null (strict JSON has no inf/nan)."""
    return float(value) if np.isfinite(value) else None


def _random_images(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniform noise alternated with smooth colour gradients (closer to camera statistics)."""
    images = []
    for i in range(n):
        if i % 2 == 0:
            images.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        else:
            ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
            base = rng.uniform(0, 255, 3).astype(np.float32)
            slope = rng.uniform(-128, 128, (2, 3)).astype(np.float32)
            img = (base + ramp[:, None, None] * slope[0] + ramp[None, :, None] * slope[1])
            images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images


def _frame_images(frames: str, n_frames: int, size: int,
                  resize_filter: str = "bicubic") -> list[np.ndarray]:
    from ..core.preprocess import to_model_input
    from ..replay.frames import iter_frames

    images = [to_model_input(rgb, size, resize_filter=resize_filter)
              for rgb in iter_frames(frames, limit=n_frames)]
    if not images:
        from ..replay.frames import BagError

        raise BagError(f"no decodable image frames in {frames!r}")
    return images


def _camera_cases(n: int, spec, camera: dict, rng) -> tuple[list, list, str]:
    """(camera frames, their model inputs by PIL) for a camera-input candidate.

    Half noise and gradients, half synthetic scenes, at the camera size, in its channel order.
    """
    from ..core.preprocess import to_model_input
    from ..demo import synthetic

    width, height = camera["camera_size"]
    swap = "bgr" if camera["camera_order"] != camera["channel_order"] else "rgb"
    frames = []
    for i in range(n):
        if i % 2:
            frames.append(synthetic.render(synthetic.random_scene(rng), width, height))
        else:
            big = _random_images(2, max(width, height), rng)[i % 4 // 2]
            frames.append(np.ascontiguousarray(big[:height, :width]))
    images = [to_model_input(f, spec.image_size, swap, camera["resize_filter"]) for f in frames]
    return frames, images, swap


def make_cases(reference: InferenceBackend, n_random: int = 4, frames: str | None = None,
               n_frames: int = 8, seed: int = 0, camera: dict | None = None) -> list[ParityCase]:
    """Random images + commands, plus up to ``n_frames`` frames of a bag/image folder.

    Case ``i`` gets a history of ``i % window_size`` features (so windows of 1..window_size
    occur), taken from the reference backend's features of the cases before it (cyclically).
    ``camera`` (a camera-input export's ``preprocess`` record): the random cases are camera
    frames, which the candidate resizes itself (`ParityCase.frame`).
    """
    spec = reference.spec
    rng = np.random.default_rng(seed)
    raw, swap = [], "rgb"
    if camera is not None:
        raw, images, swap = _camera_cases(n_random, spec, camera, rng)
    else:
        images = _random_images(n_random, spec.image_size, rng)
    if frames and camera is None:
        images += _frame_images(frames, n_frames, spec.image_size,
                                getattr(spec, "resize_filter", "bicubic"))
    if not images:
        raise ValueError("no parity cases: n_random is 0 and no frames were given")
    prompts = [reference.tokenizer.encode(COMMANDS[i % len(COMMANDS)])
               for i in range(len(images))]
    # a camera-input reference (TensorRT's check against its ONNX export) encodes the frames
    own = [raw[i] if i < len(raw) and getattr(reference, "preprocesses_on_device", False)
           else img for i, img in enumerate(images)]
    feats = [reference.encode(img, ids) for img, ids in zip(own, prompts, strict=True)]
    cases = []
    n = len(images)
    for i, (img, ids) in enumerate(zip(images, prompts, strict=True)):
        h = i % spec.window_size
        history = np.stack([feats[(i - j) % n] for j in range(h, 0, -1)]) if h else np.zeros(
            (0, spec.feature_dim), np.float32)
        cases.append(ParityCase(img, ids, history.astype(np.float32),
                                raw[i] if i < len(raw) else None, swap))
    return cases


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


def run_parity(reference: InferenceBackend, candidate: InferenceBackend,
               cases: list[ParityCase], atol: float) -> list[ParityResult]:
    """Compare ``feature`` and ``actions`` of both backends over ``cases``.

    ``passed`` needs every element within ``atol`` (max abs diff) and finite outputs.
    """
    if not cases:
        raise ValueError("run_parity needs at least one case")
    diffs: dict = {name: [] for name in OUTPUTS}
    cosines: dict = {name: [] for name in OUTPUTS}
    finite = {name: True for name in OUTPUTS}
    for case in cases:
        if case.frame is not None and getattr(reference, "preprocesses_on_device", False):
            ref = reference.infer_raw(case.frame, case.text_ids, case.history, case.swap)
        else:
            ref = reference.infer(case.image, case.text_ids, case.history)
        if case.frame is not None and getattr(candidate, "preprocesses_on_device", False):
            out = candidate.infer_raw(case.frame, case.text_ids, case.history, case.swap)
        else:
            out = candidate.infer(case.image, case.text_ids, case.history)
        for name, r, c in zip(OUTPUTS, ref, out, strict=True):
            r = np.asarray(r, np.float64)
            c = np.asarray(c, np.float64)
            if r.shape != c.shape:
                raise ValueError(f"parity: {name} shapes differ: reference {r.shape}, "
                                 f"candidate {c.shape}")
            finite[name] &= bool(np.isfinite(c).all() and np.isfinite(r).all())
            diffs[name].append(np.abs(r - c).ravel())
            cosines[name].append(_cosine(r, c))
    results = []
    for name in OUTPUTS:
        d = np.concatenate(diffs[name])
        max_abs = float(np.max(d)) if finite[name] else float("inf")
        mean_abs = float(np.mean(d)) if finite[name] else float("inf")
        cosine = float(min(cosines[name])) if finite[name] else float("nan")
        results.append(ParityResult(name, max_abs, mean_abs, cosine, float(atol),
                                    bool(finite[name] and max_abs <= atol)))
    return results


def format_report(results: list[ParityResult]) -> str:
    """A table (max abs, mean abs, cosine, pass/fail) and a line naming the worst output."""
    lines = [f"{'output':<10}{'max_abs':>12}{'mean_abs':>12}{'cosine':>14}{'atol':>10}  result"]
    for r in results:
        lines.append(f"{r.output:<10}{r.max_abs:>12.3e}{r.mean_abs:>12.3e}{r.cosine:>14.9f}"
                     f"{r.atol:>10.1e}  {'PASS' if r.passed else 'FAIL'}")
    worst = max(results, key=lambda r: (r.max_abs / r.atol) if r.atol > 0 else r.max_abs)
    verdict = "all outputs within tolerance" if all(r.passed for r in results) else "FAILED"
    lines.append(f"worst: {worst.output} (max abs {worst.max_abs:.3e} = "
                 f"{worst.max_abs / worst.atol if worst.atol > 0 else float('inf'):.3g} x atol); "
                 f"{verdict}")
    return "\n".join(lines)


def summary(results: list[ParityResult], n_cases: int) -> dict:
    """JSON-serializable parity figures (stored in the export's metadata)."""
    return {"passed": all(r.passed for r in results), "cases": n_cases,
            "outputs": {r.output: r.as_dict() for r in results}}
