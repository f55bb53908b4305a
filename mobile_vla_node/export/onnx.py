"""Export a `MobileVLAPolicy` as the two ONNX graphs of the export contract.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. With torch 2.13 and
transformers 5.23 both exporters trace Kosmos-2 correctly (max abs diff < 1e-6 on the tiny
preset), but the dynamo exporter needs two extra packages (onnxscript, onnx-ir) and takes ~14 s
instead of ~1 s for the tiny encoder; the TorchScript exporter is deprecated, not removed, in 2.13,
so it is used and the choice is recorded in the export metadata. Padding masks and the dynamic
prompt length survive tracing (checked by the parity cases and tests).

fp16: the fp32 graphs are converted with ``onnxruntime.transformers.float16`` (shipped inside the
onnxruntime / onnxruntime-gpu wheels, so no extra dependency) with ``keep_io_types=True``: graph
inputs and outputs stay uint8 / int64 / float32 and Casts are inserted at the edges, so callers do
not change. ``ReduceL2`` (the image-embedding L2 norm, a sum of squares that can overflow fp16 at
full size) stays fp32 via the op block list. LayerNormalization stays fp16: parity does not need
fp32 there (tiny and small presets: ~1e-3 max abs either way) and ONNX Runtime's CUDA kernel
accumulates mean/variance in fp32; add it to FP16_KEEP_FP32_OPS if a model's fp16 parity fails.
Constants such as the attention mask's ``finfo(float32).min`` are clamped to +-65504 by the
converter. The converter appends nodes, so the graph is re-sorted topologically afterwards.
A camera-input encoder's resize (`resize_nodes`) stays fp32: `to_fp16` takes it out of the graph
before the conversion and puts it back after (its banded matmuls are exact in float32 and TF32
only; the converter's node block list would still round the tensors between blocked nodes).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..backends.onnx_format import (
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    META_PREFIX,
    STEP_INPUTS,
    STEP_OUTPUTS,
    TEXT_AXIS,
    WINDOW_AXIS,
)
from ..core.resize import GRAPH_SCOPE

MIN_OPSET = 17
EXPORTER = "torch.onnx.export TorchScript (dynamo=False)"
FP16_KEEP_FP32_OPS = ("ReduceL2",)
# Above this many bytes of weights, tensors go to one NAME.onnx.data file (protobuf limit: 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000


class EncoderGraph(nn.Module):
    """``image`` uint8 (1, S, S, 3), ``text_ids`` int64 (1, L) -> ``feature`` float32 (1, D).

    Traced with a camera-size ``image`` (1, H, W, 3), the graph resizes it inside
    (`model.preprocessing.FramePreprocess`: the PIL tables of that size as exact banded float32
    MatMuls, or int32 Gather/Mul/Add/Div/Max/Min; bit-exact either way); ``swap_channels``: the
    camera's channel order differs from the model's (a Gather of the 3 channels first).
    """

    def __init__(self, policy, swap_channels: bool = False):
        super().__init__()
        self.policy = policy
        self.swap_channels = bool(swap_channels)

    def forward(self, image: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """Run the policy's per-frame encoder."""
        if self.swap_channels:
            image = image.index_select(3, torch.tensor([2, 1, 0]))
        return self.policy.encode_frame(image, text_ids).float()


def camera_preprocess(policy, camera_size, camera_order: str, channel_order: str = "rgb"):
    """The ``preprocess`` metadata of a camera-input encoder (None: model-size input).

    ``camera_size``: (width, height) of the camera frames the graph takes; ``camera_order``: their
    channel order (rgb8 / bgr8); ``channel_order``: the model's (node parameter channel_order).
    """
    if camera_size is None:
        return None
    width, height = (int(v) for v in camera_size)
    if width < 1 or height < 1:
        raise ValueError(f"camera size {width}x{height} must be positive")
    if camera_order not in ("rgb", "bgr") or channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel orders must be rgb or bgr, got {camera_order!r} / "
                         f"{channel_order!r}")
    cfg = policy.config
    return {"input": "camera", "camera_size": [width, height], "camera_order": camera_order,
            "channel_order": channel_order, "resize_filter": cfg.resize_filter,
            "image_pipeline": getattr(cfg, "image_pipeline", "package"),
            "image_size": cfg.image_size,
            "resize": "in the graph: PIL's tables for this size (core.resize), banded float32 "
                      "MatMuls exact in float32 and TF32 (int32 Gather/Mul/Add/Div/Max/Min "
                      "where not); equal to PIL bit for bit"}


class StepGraph(nn.Module):
    """``features`` (1, T, D), ``h0``/``c0`` (layers, 1, H) -> ``actions``, ``hn``, ``cn``.

    ``actions`` is (1, chunk, action_dim) in [-1, 1] for a regression head and (1, chunk,
    num_classes) raw logits for a classification head (the class -> velocity table is in the
    ``model_spec`` metadata and applied by the node's post-processing, as for torch).
    """

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, features: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor):
        """Run the policy's LSTM + head over a window."""
        actions, hn, cn = self.policy.decode(features, h0, c0)
        return actions.float(), hn.float(), cn.float()


def max_text_len(policy) -> int | None:
    """Longest prompt (ids) the exported encoder accepts: its positional table is fixed-size.

    PyTorch grows Kosmos-2's sinusoidal table on demand; a traced graph cannot, so a longer prompt
    would fail inside ONNX Runtime with a Gather index error. The team's layouts
    (`token_layouts`) take at most ``max_text_len`` ids, as their server pads to it.
    """
    if getattr(policy, "token_layout", "package") != "package":
        # Team layouts: fixed position ids (padding to max_text_len), table sized for them.
        return int(policy.config.max_text_len)
    try:
        emb = policy.backbone.text_model.model.embed_positions
        rows, pad = int(emb.weights.shape[0]), int(emb.padding_idx)
        latent = int(policy.backbone.config.latent_query_num)
    except (AttributeError, TypeError):
        return None
    fixed = int(policy.prefix_ids.numel()) + latent + 2  # prefix, image tokens, </image>, action
    return rows - pad - 1 - fixed


def _quiet_export(module: nn.Module, args: tuple, path: Path, opset: int, inputs, outputs,
                  dynamic_axes: dict) -> None:
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below {MIN_OPSET} (LayerNormalization needs 17)")
    # Kosmos-2 tracing emits TracerWarnings for Python-side shape checks that are constant for
    # a fixed image size, plus the exporter's own deprecation notice; parity is what counts.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic_axes, do_constant_folding=True)


def export_encoder(policy, example_ids, opset: int, workdir: Path, preprocess: dict | None = None):
    """Trace the encoder graph and return it as an ``onnx.ModelProto`` (weights loaded).

    ``preprocess`` (`camera_preprocess`): the graph takes camera frames of that size and order;
    None: model-size images, resized by the caller.
    """
    import onnx

    size = policy.config.image_size
    shape, swap = (size, size), False
    if preprocess is not None:
        width, height = preprocess["camera_size"]
        shape = (height, width)
        swap = preprocess["camera_order"] != preprocess["channel_order"]
    image = torch.zeros((1, *shape, 3), dtype=torch.uint8)
    ids = torch.as_tensor(example_ids, dtype=torch.long).reshape(1, -1)
    path = workdir / "encoder.onnx"
    _quiet_export(EncoderGraph(policy, swap), (image, ids), path, opset, ENCODER_INPUTS,
                  ENCODER_OUTPUTS, {"text_ids": {1: TEXT_AXIS}})
    model = onnx.load(str(path))
    _fix_dims(model.graph.output[0], [1, policy.feature_dim])
    return model


def export_step(policy, opset: int, workdir: Path):
    """Trace the LSTM + head graph and return it as an ``onnx.ModelProto``."""
    import onnx

    cfg = policy.config
    gen = torch.Generator().manual_seed(0)
    features = torch.randn((1, cfg.window_size, policy.feature_dim), generator=gen)
    h0, c0 = policy.zero_state(1, device=torch.device("cpu"), dtype=torch.float32)
    path = workdir / "step.onnx"
    _quiet_export(StepGraph(policy), (features, h0, c0), path, opset, STEP_INPUTS, STEP_OUTPUTS,
                  {"features": {1: WINDOW_AXIS}})
    model = onnx.load(str(path))
    state = [cfg.lstm_layers, 1, cfg.lstm_hidden]
    width = policy.act_head.action_dim   # num_classes for a classification head (logits)
    for out, dims in zip(model.graph.output, ([1, cfg.fwd_pred_next_n, width], state, state),
                         strict=True):
        _fix_dims(out, dims)
    return model


def _fix_dims(value_info, dims: list[int]) -> None:
    """Replace tracer-generated symbolic output dims (e.g. batch) with the known sizes."""
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        shape.dim.add().dim_value = int(d)


def resize_nodes(graph) -> list:
    """The nodes of the in-graph resize of a camera-input encoder (none in other graphs).

    The traced nodes of `model.preprocessing.PilResize` (named ``.../pil_resize/...``,
    `core.resize.GRAPH_SCOPE`), and the Constants that only they read, whatever their names.
    """
    marker = f"/{GRAPH_SCOPE}/"
    keep = {i for i, node in enumerate(graph.node) if marker in node.name}
    consumers: dict = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, set()).add(i)
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.output and all(
                consumers.get(name) and consumers[name] <= keep for name in node.output):
            keep.add(i)
    return [graph.node[i] for i in sorted(keep)]


def to_fp16(model):
    """fp16 weights and compute, float32/uint8/int64 I/O kept (see the module docstring).

    The in-graph resize of a camera-input encoder (`resize_nodes`) stays float32: its banded
    matmuls are exact in float32 and TF32, not in fp16 (sums up to 2**24). The converter never
    sees it (its node block list would still round the tensors between blocked nodes to fp16):
    the resize is taken out, its result made a graph input, and put back afterwards.
    """
    import onnx
    from onnxruntime.transformers import float16

    resize, boundary = _detach_resize(model)
    options = dict(keep_io_types=True,
                   op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32_OPS))
    if weight_bytes(model) <= EXTERNAL_DATA_BYTES:
        converted = float16.convert_float_to_float16(model, **options)
    else:
        # In-memory shape inference stops at protobuf's 2 GiB; given a path, the converter
        # infers shapes file-to-file (infer_shapes_path) and loads the result back.
        with tempfile.TemporaryDirectory(prefix="vla_fp16_") as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save_model(model, str(path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location="model.onnx.data")
            converted = float16.convert_float_to_float16(str(path), **options)
    if resize:
        graph = converted.graph
        inputs = [v for v in graph.input if v.name not in boundary]
        del graph.input[:]
        graph.input.extend(inputs)
        graph.node.extend(resize)
    topological_sort(converted.graph)
    return converted


def _detach_resize(model):
    """Take the in-graph resize out of ``model`` (in place): (its nodes, its result names).

    Its results (float32 pixel values, read by the rest of the graph) become graph inputs of
    the types and shapes ONNX shape inference gives them on the resize and what feeds it; the
    converter then casts them to fp16 like any float32 input. A Constant the exporter shared
    between the resize and the rest stays in the rest, and the resize gets its own copy.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    resize = resize_nodes(graph)
    if not resize:
        return [], set()
    ids = {id(node) for node in resize}
    read = {name for node in graph.node if id(node) not in ids for name in node.input}
    read |= {v.name for v in graph.output}
    detached = [onnx.NodeProto.FromString(n.SerializeToString()) for n in resize]
    shared = {name for node in detached if node.op_type == "Constant"
              for name in node.output if name in read}
    for node in detached:
        for k, name in enumerate(node.input):
            if name in shared:
                node.input[k] = f"{name}_{GRAPH_SCOPE}"
        if node.op_type == "Constant" and set(node.output) & shared:
            node.name = f"{node.name}_{GRAPH_SCOPE}"
            for k, name in enumerate(node.output):
                node.output[k] = f"{name}_{GRAPH_SCOPE}"
    produced = {name for node in detached for name in node.output}
    boundary = sorted(produced & read)
    # type the results: shape inference on the resize and the nodes that feed it
    producer = {name: node for node in graph.node for name in node.output}
    feeding, stack = [], [name for node in detached for name in node.input]
    seen = {id(node) for node in resize}
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            feeding.append(node)
            stack.extend(node.input)
    needed = {name for node in detached + feeding for name in node.input}
    sub = helper.make_model(
        helper.make_graph(feeding[::-1] + detached, "resize",
                          [v for v in graph.input if v.name in needed],
                          [onnx.ValueInfoProto(name=name) for name in boundary],
                          [t for t in graph.initializer if t.name in needed]),
        opset_imports=model.opset_import)
    topological_sort(sub.graph)
    typed = {v.name: v for v in onnx.shape_inference.infer_shapes(sub).graph.output}
    if not all(typed[name].type.tensor_type.elem_type for name in boundary):
        raise ValueError(f"cannot type the in-graph resize's results {boundary} for fp16")
    kept = [node for node in graph.node
            if id(node) not in ids or (node.op_type == "Constant" and set(node.output) & shared)]
    del graph.node[:]
    graph.node.extend(kept)
    graph.input.extend(typed[name] for name in boundary)
    return detached, set(boundary)


def topological_sort(graph) -> None:
    """Reorder ``graph.node`` so every node follows the producers of its inputs."""
    produced = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in produced for name in node.input):
                ordered.append(node)
                produced.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in produced})[:5]
            raise ValueError(f"ONNX graph has a cycle or undefined inputs: {missing}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def set_metadata(model, values: dict) -> None:
    """Set ``mobile_vla.<key>`` metadata_props (string values) replacing old ones."""
    keep = [p for p in model.metadata_props
            if not (p.key.startswith(META_PREFIX) and p.key[len(META_PREFIX):] in values)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        prop = model.metadata_props.add()
        prop.key = META_PREFIX + key
        prop.value = value


def weight_bytes(model) -> int:
    """Bytes of the model's initializers held in memory."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def save_model(model, path: Path) -> bool:
    """Write ``model`` to ``path``; big models put weights in ``NAME.onnx.data``.

    Returns whether external data was used.
    """
    import onnx

    data = path.with_name(path.name + ".data")
    if weight_bytes(model) > EXTERNAL_DATA_BYTES:
        if data.exists():
            data.unlink()  # save_model appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
        os.chmod(data, path.stat().st_mode & 0o777)  # onnx creates it owner-only
        return True
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp))
    os.replace(tmp, path)
    if data.exists():
        data.unlink()  # left over from an earlier, larger export to the same name
    return False


def update_metadata(path: Path, values: dict) -> None:
    """Rewrite metadata_props of a written file (external weights are left untouched)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    set_metadata(model, values)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp))
    os.replace(tmp, path)


def check(path: Path) -> None:
    """``onnx.checker`` on a written file (by path, so external data is handled)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
