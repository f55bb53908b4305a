"""CUDA graphs for the torch backend: one captured graph per static input shape, or a reason.

The torch backend's step has two parts with different shapes:

* the per-frame encoder, keyed by the frame's shape (the model-size image, or the raw camera
  frame when the resize runs on the device), its channel order and the prompt length ``L``;
* the window step (LSTM over ``T`` features + MLP head), keyed by ``T``. While the history fills
  after a new command or reset, ``T`` grows 1, 2, ..., ``window_size``. Zero-padding the window to
  a fixed length would change the LSTM's output (a zero input still moves the state through the
  biases), so each length gets its own graph: at most ``window_size`` small graphs, all captured
  by the backend's warm-up.

`GraphCache` maps key -> `CapturedCall` with an LRU bound. A capture that fails is remembered
with its reason and that key runs eagerly from then on (no retry on every frame); the reason is
logged once and reported by ``describe()``. The capture itself is a function given to the cache
(`capture_cuda` on a GPU), so the keying, eviction and fallback logic is testable on a CPU.
Each graph keeps its own private memory pool: with a shared pool a graph captured later may put
its outputs in blocks that an earlier graph uses as scratch, and a replay would overwrite them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

LOG = logging.getLogger(__name__)
DEFAULT_MAX_GRAPHS = 32
CAPTURE_WARMUP = 2  # eager runs on a side stream before capture (cuBLAS/cuDNN handles, autotune)


def unavailable_reason(torch, device, precision: str = "") -> str | None:
    """Why CUDA graphs cannot be used for ``device`` (None: they can)."""
    kind = getattr(device, "type", str(device))
    if kind != "cuda":
        return f"cuda_graph unavailable on {kind}: CUDA graphs need a CUDA device"
    if not hasattr(torch.cuda, "CUDAGraph") or not hasattr(torch.cuda, "graph"):
        return f"cuda_graph unavailable: torch {torch.__version__} has no torch.cuda.CUDAGraph"
    return None


class CapturedCall:
    """A captured graph with static input and output tensors.

    Calling it copies the new inputs into the static inputs (host tensors are uploaded straight
    into them), replays the graph and returns the static outputs: they are overwritten by the
    next replay, so read or copy them first.
    """

    def __init__(self, graph, static_inputs: Sequence, static_outputs):
        self.graph = graph
        self.static_inputs = tuple(static_inputs)
        self.static_outputs = static_outputs
        self.replays = 0

    def __call__(self, *inputs):
        """Copy ``inputs`` into the static inputs, replay, return the static outputs."""
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"captured call takes {len(self.static_inputs)} inputs, got "
                             f"{len(inputs)}")
        for static, new in zip(self.static_inputs, inputs, strict=True):
            if tuple(new.shape) != tuple(static.shape) or new.dtype != static.dtype:
                raise ValueError(f"input {tuple(new.shape)} {new.dtype} does not match the "
                                 f"captured {tuple(static.shape)} {static.dtype}")
            if new is not static:
                static.copy_(new, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        return self.static_outputs


def capture_cuda(torch, fn: Callable, inputs: Sequence, device,
                 warmup: int = CAPTURE_WARMUP) -> CapturedCall:
    """Capture ``fn(*static_inputs)`` in a CUDA graph on ``device``.

    Static inputs are new device tensors shaped like ``inputs`` (which may be host tensors) and
    filled from them; ``fn`` runs ``warmup`` times on a side stream first, as PyTorch requires.
    Call inside the same grad/inference mode the replays will use.
    """
    static = tuple(torch.empty(tuple(x.shape), dtype=x.dtype, device=device) for x in inputs)
    for s, x in zip(static, inputs, strict=True):
        s.copy_(x)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(*static)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn(*static)
    return CapturedCall(graph, static, outputs)


class GraphCache:
    """Shape-keyed captured calls with an LRU bound and remembered capture failures."""

    def __init__(self, capture: Callable[[Callable, Sequence], CapturedCall],
                 max_graphs: int = DEFAULT_MAX_GRAPHS, on_change: Callable | None = None):
        if max_graphs < 1:
            raise ValueError(f"max_graphs={max_graphs} must be >= 1")
        self._capture = capture
        self.max_graphs = max_graphs
        self.graphs: OrderedDict = OrderedDict()
        self.failed: dict = {}  # key -> reason
        self.captures = 0
        self.evictions = 0
        self.eager_calls = 0
        self._on_change = on_change

    def run(self, key, fn: Callable, *inputs):
        """``fn(*inputs)``, replayed from the graph captured for ``key`` (captured on first use).

        Falls back to calling ``fn`` eagerly when this key's capture failed (now or before).
        """
        call = self.graphs.get(key)
        if call is None:
            if key in self.failed:
                self.eager_calls += 1
                return fn(*inputs)
            try:
                call = self._capture(fn, inputs)
            except Exception as exc:  # noqa: BLE001 - any capture failure means eager for that key
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                self.failed[key] = reason
                LOG.warning("CUDA graph capture failed for %s (%s); running it eagerly",
                            format_key(key), reason)
                self._changed()
                self.eager_calls += 1
                return fn(*inputs)
            self.captures += 1
            self.graphs[key] = call
            while len(self.graphs) > self.max_graphs:
                old, _ = self.graphs.popitem(last=False)
                self.evictions += 1
                LOG.info("CUDA graph for %s evicted (limit %d graphs)", format_key(old),
                         self.max_graphs)
            LOG.info("CUDA graph captured for %s", format_key(key))
            self._changed()
        else:
            self.graphs.move_to_end(key)
        return call(*inputs)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)

    def summary(self) -> str:
        """One line for diagnostics: graphs held, what was captured, failures with reasons."""
        parts = [f"on ({len(self.graphs)} graphs: "
                 + (", ".join(format_key(k) for k in self.graphs) or "none yet")
                 + f"; {self.captures} captured, {self.evictions} evicted)"]
        if self.failed:
            parts.append("eager for " + "; ".join(f"{format_key(k)}: {r}"
                                                  for k, r in self.failed.items()))
        return "; ".join(parts)

    def clear(self) -> None:
        """Drop every graph (their memory pools are freed with them) and failure record."""
        self.graphs.clear()
        self.failed.clear()


def format_key(key) -> str:
    """Readable key: ('step', 3) -> 'step T=3'; ('encoder', (1, 224, 224, 3), 'rgb', 7) -> ..."""
    if isinstance(key, tuple) and key and key[0] == "step":
        return f"step T={key[1]}"
    if isinstance(key, tuple) and key and key[0] == "encoder":
        shape = "x".join(str(s) for s in key[1])
        return f"encoder {shape} {key[2]} L={key[3]}"
    return str(key)
