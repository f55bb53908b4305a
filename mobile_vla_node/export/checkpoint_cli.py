"""``vla_checkpoint inspect PATH``: what a checkpoint holds and whether this package can run it.

Prints the container, the key groups (counts, shapes), the detected policy head, window, chunk,
action dim, image normalization and resize filter, action scale, LoRA adapters, how keys map
(renamed / dropped / missing / unexpected) and the node parameters to run it. Exit status: 0 when
it runs faithfully, 1 when it cannot (every reason printed), 2 for usage or unreadable files.

Nothing is built at full size: the expected keys come from the policy built on the ``meta``
device (no memory), so inspecting the full Kosmos-2 policy takes seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

EXIT_OK, EXIT_UNFAITHFUL, EXIT_USAGE = 0, 1, 2
PROBE_INSTRUCTIONS = ("Navigate to the gray basket on the left",
                      "Navigate to the gray basket on the right")
PROBE_FRAMES = 8


def build_parser() -> argparse.ArgumentParser:
    """The ``vla_checkpoint`` argument parser."""
    parser = argparse.ArgumentParser(prog="vla_checkpoint", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="describe a checkpoint and how it maps onto the policy")
    ins.add_argument("path", help="checkpoint (.ckpt, .pth, .pt, .bin, .safetensors) or folder")
    ins.add_argument("--config", default="", help="the training JSON (node parameter "
                     "model_config); default: <checkpoint>.json or config.json beside it")
    ins.add_argument("--backbone-path", default="", help="local kosmos-2-patch14-224 folder")
    ins.add_argument("--preset", default="", help="architecture preset for sizes the config "
                     "does not give (default: mobile-vla-kosmos2, or tiny for tiny backbones)")
    ins.add_argument("--allow-unsafe-pickle", action="store_true",
                     help="full pickle (can run code): only for files you trust")
    add_image_arguments(ins)
    from .cli import add_layout_arguments

    add_layout_arguments(ins)
    ins.add_argument("--probe", action="store_true",
                     help="run the checkpoint on the same frames with two instructions and "
                          "print how much the actions differ (loads the weights)")
    ins.add_argument("--instructions", nargs=2, default=list(PROBE_INSTRUCTIONS),
                     metavar=("A", "B"), help="the probe's two instructions (default: "
                     f"{PROBE_INSTRUCTIONS[0]!r} and {PROBE_INSTRUCTIONS[1]!r})")
    return parser


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """--image-pipeline and the custom pipeline's values (node parameters of the same names)."""
    from ..core.image_pipeline import PIPELINES

    parser.add_argument("--image-pipeline", default="auto", choices=PIPELINES,
                        help="camera frame -> model input (default auto: from the checkpoint; "
                             "for the team's checkpoints a guess the verdict refuses)")
    parser.add_argument("--resize-filter", default="", help="with --image-pipeline custom")
    parser.add_argument("--image-size", type=int, default=0, help="with --image-pipeline custom")
    parser.add_argument("--image-mean", type=float, nargs=3, default=(),
                        help="with --image-pipeline custom: 3 values after /255")
    parser.add_argument("--image-std", type=float, nargs=3, default=(),
                        help="with --image-pipeline custom: 3 values after /255")


def image_choice(args):
    """The `ImageChoice` of parsed `add_image_arguments` (ValueError if inconsistent)."""
    from ..core.image_pipeline import ImageChoice

    return ImageChoice(getattr(args, "image_pipeline", "auto"),
                       getattr(args, "resize_filter", ""), int(getattr(args, "image_size", 0)),
                       tuple(getattr(args, "image_mean", ()) or ()),
                       tuple(getattr(args, "image_std", ()) or ()))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return inspect(args)
    except (FileNotFoundError, ValueError) as exc:   # unreadable config, bad arguments
        print(f"vla_checkpoint: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _is_tiny(prep) -> bool:
    """The checkpoint's backbone has the `tiny` preset's width (test fixtures, the demo)."""
    emb = prep.state.get("backbone.text_model.model.embed_tokens.weight")
    return emb is not None and tuple(emb.shape)[1] == 64


def inspect(args) -> int:
    """Print the report for ``args.path``; return the exit status."""
    from ..model.errors import CheckpointError
    from ..model.loader import ModelSource, prepare

    path = Path(args.path).expanduser()
    if not path.exists():
        print(f"vla_checkpoint: error: {str(path)!r} does not exist", file=sys.stderr)
        return EXIT_USAGE
    source = ModelSource(args.preset or "mobile-vla-kosmos2", str(path), args.backbone_path,
                         True, args.allow_unsafe_pickle, args.config,
                         image=image_choice(args),
                         token_layout=getattr(args, "token_layout", "auto"),
                         tokenizer_path=getattr(args, "tokenizer_path", ""))
    try:
        prep = prepare(source)
        if not args.preset and _is_tiny(prep):     # re-read only small files
            source = dataclasses.replace(source, preset="tiny")
            prep = prepare(source)
    except CheckpointError as exc:
        print(f"checkpoint   : {path}\nverdict      : CANNOT READ: {exc}")
        return EXIT_UNFAITHFUL
    report = Report(prep, source, tuple(getattr(args, "instructions", PROBE_INSTRUCTIONS)))
    if getattr(args, "probe", False):
        report.probe = run_probe(prep, source, report.instructions)
    print(report.render())
    return EXIT_OK if report.faithful() else EXIT_UNFAITHFUL


def run_probe(prep, source, instructions, n_frames: int = PROBE_FRAMES) -> dict:
    """Both instructions on the same seeded frames, windows as the runtime builds them.

    Returns the largest action difference (normalized, and m/s for a regression head), the
    class disagreements of a classification head, and the prompts' token counts; or
    ``{"error": why}`` when the checkpoint cannot be loaded.
    """
    import numpy as np
    import torch

    from ..model.errors import CheckpointError
    from ..model.loader import load_policy

    if prep.problems:
        return {"error": "not run: the checkpoint cannot be loaded (see the verdict)"}
    try:
        loaded = load_policy(source)
    except (CheckpointError, ValueError, OSError) as exc:
        return {"error": f"not run: {exc}"}
    model, cfg = loaded.model, loaded.config
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (n_frames, cfg.image_size, cfg.image_size, 3),
                                           dtype=np.uint8))
    outputs, counts = [], []
    with torch.no_grad():
        for text in instructions:
            ids = torch.from_numpy(loaded.tokenizer.encode(text))[None]
            counts.append(int(ids.shape[1]))
            feats = model.encode_frame(frames, ids.expand(n_frames, -1))
            chunks = []
            for i in range(n_frames):      # the runtime's window: up to window_size features
                window = feats[max(0, i + 1 - cfg.window_size):i + 1][None]
                h0, c0 = model.zero_state(1)
                chunks.append(model.decode(window, h0, c0)[0][0])
            outputs.append(torch.stack(chunks).double().numpy())
    diff = float(np.abs(outputs[0] - outputs[1]).max())
    result = {"instructions": list(instructions), "ids": counts, "frames": n_frames,
              "max_abs": diff, "layout": cfg.token_layout}
    if cfg.head == "classification":
        result["class_changes"] = int((outputs[0].argmax(-1) != outputs[1].argmax(-1)).sum())
        result["steps"] = int(outputs[0].shape[0] * outputs[0].shape[1])
    else:
        result["max_abs_mps"] = diff * cfg.max_linear
    return result


class Report:
    """The inspect report of one prepared checkpoint."""

    def __init__(self, prep, source, instructions=PROBE_INSTRUCTIONS):
        self.prep, self.source = prep, source
        self.instructions = tuple(instructions)
        self.probe: dict | None = None
        self.missing, self.unexpected, self.shapes_bad = [], [], []
        self.reasons = list(prep.problems)
        if prep.layout is not None and not prep.problems:
            self._compare()
        self.reasons += [f"assumed: {a}" for a in prep.assumed]
        if self.missing:
            self.reasons.append(f"{len(self.missing)} tensors missing (e.g. {self.missing[0]})"
                                + ("; set backbone_path" if any(
                                    k.startswith("backbone.") for k in self.missing) else ""))
        if self.unexpected:
            self.reasons.append(f"{len(self.unexpected)} unexpected tensors (e.g. "
                                f"{self.unexpected[0]}): not understood, not loaded")
        if self.shapes_bad:
            self.reasons.append(f"shape mismatches: {self.shapes_bad[:4]}")

    def faithful(self) -> bool:
        """True when nothing is refused, assumed, missing or unexpected."""
        return not self.reasons

    def _compare(self) -> None:
        import torch

        from ..model.loader import backbone_files, build_model
        from ..model.tokenizer import PromptTokenizer, builtin_tokenizer

        cfg = self.prep.config
        tok = PromptTokenizer(builtin_tokenizer(), cfg.prompt_template, cfg.pad_to)
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build_model(cfg, tok).state_dict().items()}
        have = {k: tuple(v.shape) for k, v in self.prep.state.items()}
        provided: set = set()
        if self.source.backbone_path:
            provided = {"backbone." + k for k in _weight_keys(
                backbone_files(Path(self.source.backbone_path)))}
        lora = set(self.prep.lora.pairs) if self.prep.lora else set()
        self.missing = sorted(set(expected) - set(have) - provided - lora)
        self.unexpected = sorted(set(have) - set(expected))
        self.shapes_bad = [f"{k}: {have[k]} vs {expected[k]}" for k in sorted(have)
                           if k in expected and have[k] != expected[k]]

    def render(self) -> str:
        """The report text."""
        p, cfg = self.prep, self.prep.config
        lines = [f"checkpoint   : {p.checkpoint} ({_size(p.checkpoint)})"]
        lines.append(f"container    : {_container(p.container)}")
        lines.append(f"config       : {p.config_file or 'none (preset ' + repr(cfg.preset) + ')'}"
                     + (" (training JSON)" if p.facts else " (native)" if p.config_file else ""))
        lines.append("key groups   : (wrapper prefixes stripped, PEFT names made plain)")
        lines += [f"  {g}" for g in _groups(p.raw_shapes, p.lora)]
        head = p.layout
        lines.append(f"head         : {head.name} ({head.kind}) -- {head.source}" if head
                     else "head         : not recognised")
        n = p.notes
        lines.append(f"window       : {cfg.window_size}" + _why(n, "window_size"))
        lines.append(f"chunk        : {cfg.fwd_pred_next_n}" + _why(n, "fwd_pred_next_n"))
        if cfg.head == "classification":
            lines.append(f"classes      : {cfg.num_classes}" + _why(n, "num_classes"))
            for i, row in enumerate(cfg.class_velocities):
                lines.append(f"  class {i}    -> vx {row[0]:g} vy {row[1]:g} wz {row[2]:g}")
            lines.append("class table  :" + _why(n, "class_velocities"))
        else:
            lines.append(f"action dim   : {cfg.action_dim}" + _why(n, "action_dim"))
        lines.append(f"LSTM         : hidden {cfg.lstm_hidden}, layers {cfg.lstm_layers}; MLP "
                     f"{cfg.mlp_hidden}" + _why(n, "lstm_hidden"))
        lines += self.image_lines()
        lines += self.layout_lines()
        if cfg.head != "classification":
            lines.append(f"action scale : x{cfg.max_linear:g} m/s" + _why(n, "max_linear"))
        if cfg.fwd_pred_next_n > 1:
            lines.append(f"chunk period : {cfg.chunk_step_period_s:g} s per chunk step (preset; "
                         "training configs do not state it: node parameter "
                         "chunk_step_period_s)")
        lines.append(f"LoRA         : {n.get('lora', 'none')}")
        if p.plan is not None:
            renamed = _prefix_map(p.plan.renamed)
            lines.append("mapping      : " + ("; ".join(renamed) if renamed else
                                             "keys already in this package's names"))
        lines.append(f"dropped      : {_list(sorted(p.ignored))}")
        lines.append(f"missing      : {_list(self.missing)}")
        lines.append(f"unexpected   : {_list(self.unexpected)}")
        if self.faithful():
            lines.append("verdict      : OK -- runs faithfully with these node parameters:")
            lines.append(self.params_yaml())
        else:
            lines.append("verdict      : CANNOT RUN FAITHFULLY:")
            lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)

    def layout_lines(self) -> list:
        """Token layout, tokenizer, whether commands reach the action token, and the probe."""
        from ..model import token_layouts as tl

        p, cfg = self.prep, self.prep.config
        lines = [f"token layout : {p.notes.get('token_layout', cfg.token_layout)}",
                 f"tokenizer    : {p.notes.get('tokenizer', 'n/a')}"
                 + (f"; max_text_len {cfg.max_text_len}" + _why(p.notes, "max_text_len")
                    if cfg.token_layout in tl.TEAM_LAYOUTS else "")]
        latent = cfg.latent_query_num
        if cfg.token_layout == tl.KOSMOS:
            lines.append(f"instructions : INSTRUCTION-BLIND: {tl.BLIND_TEXT} (the first {latent} "
                         f"prompt positions hold image tokens; every prompt of up to "
                         f"{tl.blind_limit(latent)} ids, <s> and </s> included, is lost but for "
                         "its length; a longer prompt's ids from "
                         f"{latent} on reach the action token)")
            counts = self._prompt_ids()
            for text, n in counts:
                lines.append(f"  {text!r}: {n} ids -> "
                             + tl.visibility(cfg.token_layout, n, latent).describe())
        else:
            lines.append(f"instructions : every prompt id reaches the action token "
                         f"({cfg.token_layout} layout)")
        if self.probe is not None:
            lines.append("probe        : " + _probe_text(self.probe, cfg))
        return lines

    def _prompt_ids(self) -> list:
        """(instruction, token count) of the probe instructions, if the tokenizer loads."""
        from ..model.loader import make_tokenizer

        if not self.prep.tokenizer_file:
            return []
        try:
            tok = make_tokenizer(self.prep)
            return [(t, len(tok.encode(t))) for t in self.instructions]
        except (ValueError, OSError):
            return []

    def image_lines(self) -> list:
        """The image pipeline: values, preset, why, and whether it is determined."""
        p, cfg = self.prep, self.prep.config
        lines = [f"image        : {cfg.image_norm} (mean {_fmt(cfg.image_mean)}, std "
                 f"{_fmt(cfg.image_std)} after /255), resize {cfg.resize_filter} (PIL), "
                 f"{cfg.image_size}x{cfg.image_size}"]
        why = p.notes.get("image_pipeline")
        if why is None:
            given = self.source.image.explicit
            why = ("given" if given else "recorded in this package's config.json" if
                   p.config_file is not None else "the preset's defaults")
        lines.append(f"pipeline     : {cfg.image_pipeline} -- {why}")
        if p.image_undetermined:
            lines.append("  NOT DETERMINED: " + ("the training JSON alone is ambiguous" if
                                                 p.facts is not None else "no training JSON "
                                                 "states it") + "; give --image-pipeline (node "
                         "parameter image_pipeline)")
        return lines

    def params_yaml(self) -> str:
        """A params-file snippet that runs this checkpoint."""
        p, s = self.prep, self.source
        rows = [("backend", "torch"), ("model_preset", p.config.preset),
                ("model_path", str(Path(s.model_path).resolve()))]
        if p.config_file is not None and p.facts is not None:
            rows.append(("model_config", str(Path(p.config_file).resolve())))
        rows.append(("backbone_path", str(Path(s.backbone_path).resolve())
                     if s.backbone_path else ""))
        rows.append(("strict_loading", True))
        rows += _image_rows(s.image, p)
        if s.tokenizer_path:
            rows.append(("tokenizer_path", str(Path(s.tokenizer_path).resolve())))
        if s.token_layout != "auto" or p.team:
            rows.append(("token_layout", p.config.token_layout))
        text = ["/**:", "  ros__parameters:"]
        for key, value in rows:
            val = ("true" if value is True else f'"{value}"' if isinstance(value, str)
                   else f"{value}")   # lists print as YAML flow sequences
            text.append(f"    {key}: {val}")
        return "\n".join(text)


def _probe_text(probe: dict, cfg) -> str:
    if "error" in probe:
        return probe["error"]
    a, b = probe["instructions"]
    head = (f"{a!r} ({probe['ids'][0]} ids) vs {b!r} ({probe['ids'][1]} ids) on "
            f"{probe['frames']} frames: ")
    if "class_changes" in probe:
        body = (f"max |logit difference| {probe['max_abs']:.3g}, {probe['class_changes']} of "
                f"{probe['steps']} chunk steps change class")
    else:
        body = (f"max |action difference| {probe['max_abs']:.3g} (normalized) = "
                f"{probe['max_abs_mps']:.3g} m/s")
    if probe["max_abs"] == 0.0:
        body += " -- the instruction does not change the actions"
    return head + body


def _image_rows(choice, prep) -> list:
    """image_pipeline rows of the params snippet (what was given, or the team preset in use)."""
    if choice.pipeline == "custom":
        return [("image_pipeline", "custom"), ("resize_filter", choice.resize_filter),
                ("image_size", int(choice.image_size)),
                ("image_mean", [float(v) for v in choice.image_mean]),
                ("image_std", [float(v) for v in choice.image_std])]
    if choice.explicit or prep.facts is not None:
        return [("image_pipeline", prep.config.image_pipeline)]
    return []


def _weight_keys(files) -> set:
    keys: set = set()
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), "pt") as handle:
                keys.update(handle.keys())
        else:
            from ..model.checkpoint import read_state_dict

            keys.update(read_state_dict(f))
    return {k for k in keys if not k.startswith("text_model.lm_head.")}


def _size(path) -> str:
    try:
        size = Path(path).stat().st_size
    except (OSError, TypeError):
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return "?"


def _container(c) -> str:
    if c is None:
        return "none"
    text = {"safetensors": "safetensors (tensors only)",
            "lightning": "Lightning .ckpt ('state_dict', keys prefixed 'model.')",
            "pth": f".pth/.pt ('{c.wrapper}')",
            "tensors": "plain tensor mapping"}[c.kind]
    if c.kind != "safetensors":
        text += ", read with weights_only=True"
    extras = ", ".join(f"{k}={v}" for k, v in sorted(c.extras.items()))
    if extras:
        text += f"; {extras}"
    if c.args:
        text += f"; args: argparse.Namespace ({len(c.args)} fields, e.g. " + ", ".join(
            f"{k}={v!r}" for k, v in list(sorted(c.args.items()))[:3]) + ")"
    return text


def _groups(shapes: dict, lora) -> list:
    groups: dict = {}
    for key, shape in shapes.items():
        parts = key.split(".")
        depth = 3 if parts[0] == "act_head" and len(parts) > 3 and parts[2] == "mlp" else 2
        name = ".".join(parts[:depth]) if len(parts) > depth else parts[0]
        groups.setdefault(name, []).append((key, shape))
    out = []
    for name, items in sorted(groups.items()):
        params = sum(_numel(s) for _, s in items)
        shown = ", ".join(f"{k[len(name) + 1:] or k}{list(s)}" for k, s in sorted(items)[:3])
        more = f", ... (+{len(items) - 3})" if len(items) > 3 else ""
        out.append(f"{name:<34} {len(items):>5} tensors {params:>13,} values  {shown}{more}")
    if lora is not None and lora.pairs:
        out.append(f"{'LoRA adapters (lora_A/lora_B)':<34} {2 * len(lora.pairs):>5} tensors "
                   f"rank {lora.rank()}, e.g. {sorted(lora.pairs)[0]}")
    return out


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _prefix_map(renamed: dict) -> list:
    """``old.prefix.* -> new.prefix.* (n tensors)`` from renamed keys (common tail dropped)."""
    pairs: dict = {}
    for old, new in renamed.items():
        a, b = old.split("."), new.split(".")
        while len(a) > 1 and len(b) > 1 and a[-1] == b[-1]:
            a, b = a[:-1], b[:-1]
        key = (".".join(a) + ".", ".".join(b) + ".")
        pairs[key] = pairs.get(key, 0) + 1
    return [f"{a}* -> {b}* ({n} tensors)" for (a, b), n in sorted(pairs.items())]


def _why(notes: dict, key: str) -> str:
    return f"   [{notes[key]}]" if key in notes else ""


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _list(items, limit: int = 6) -> str:
    if not items:
        return "none"
    more = f" ... (+{len(items) - limit})" if len(items) > limit else ""
    return f"{len(items)}: " + ", ".join(items[:limit]) + more


if __name__ == "__main__":
    sys.exit(main())
