#!/usr/bin/env python3
"""Train the embedded demo policy (``tiny`` preset) on the synthetic world; CPU, deterministic.

Writes ``mobile_vla_node/model/demo_policy/{model.safetensors, config.json, tokenizer.json,
metrics.json}``. Training uses exactly the runtime's layout: prompts are never padded (a batch
holds prompts of one token length), and windows of 1..window_size frames of one scene go through
``encode_frame`` then ``decode`` from a zero state. Multi-frame windows either drift (every frame
rendered, boxes moving slightly) or are static (one frame's feature repeated: a still robot).

Targets are normalized actions: ``[linear_x / max_linear, linear_y / max_linear, angular_z /
max_angular]`` with max_linear 0.5 (the preset) and max_angular 1.0 (the node's default).

What makes a 64-wide Kosmos-2 learn this in a few CPU minutes (see `init_for_training`): a
re-scaled init of the text side, the image-to-text resampler and the LSTM head, larger vision
position embeddings, and a frozen vision tower (ViT) whose random features already encode where
each coloured box is (a linear probe of the resampled image embeddings at init recovers a box's
x and size with R^2 ~0.7-0.9); the resampler, text model and head learn to read the named box
out of them. Training the ViT as well (--vision-lr-scale) converged more slowly in this budget.
Half the batches are mirrored left-right (the "go to" turn negated).

    .venv/bin/python scripts/train_demo_policy.py      # ~5 minutes on 2 idle CPU cores
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mobile_vla_node.core.preprocess import to_model_input
from mobile_vla_node.demo import synthetic
from mobile_vla_node.model.checkpoint import save_safetensors
from mobile_vla_node.model.loader import RANDOM_SEED
from mobile_vla_node.model.policy import MobileVLAPolicy
from mobile_vla_node.model.presets import DEMO_POLICY_DIR, preset_config
from mobile_vla_node.model.tokenizer import PromptTokenizer, builtin_tokenizer

MAX_ANGULAR = 1.0  # the node's default max_angular
TRAIN_SEED_OFFSET = 1000  # training scene generators use seeds far from evaluate()'s 12345
MAX_WEIGHTS_BYTES = 2 * 1024 * 1024
EVAL_SEED = 12345  # synthetic.evaluate's default
VISION_PREFIX = "backbone.vision_model."  # the ViT; the image-to-text resampler trains


def scale(config) -> np.ndarray:
    """Velocity per unit of normalized action, per axis."""
    return np.array([config.max_linear, config.max_linear, MAX_ANGULAR])


def make_dataset(n_scenes: int, seed: int, config, tokenizer: PromptTokenizer,
                 static_fraction: float, goal_weight: int, n_rooms: int) -> dict:
    """Render ``n_scenes`` windows and group them by (prompt length, window length, frames).

    A window is 1..window_size frames of one scene. A "drifting" window renders every frame with
    the boxes moving slightly; a "static" one (a still robot and scene) renders one frame whose
    feature fills the whole window, the layout evaluation uses, at a quarter of the cost.
    """
    rng = np.random.default_rng(seed)
    rooms = [int(r) for r in rng.integers(0, 2**31 - 1, n_rooms)]
    # "go to" scenes are the hard, image-dependent part: `goal_weight` x the others' share.
    cycle = [c for c in synthetic.INSTRUCTIONS
             for _ in range(goal_weight if c in synthetic.GO_TO else 1)]
    frames, targets, prompts, buckets = [], [], {}, {}
    for i in range(n_scenes):
        instruction = cycle[i % len(cycle)]
        room = rooms[i * n_rooms // n_scenes]  # consecutive scenes share a room: cached render
        scene = replace(synthetic.random_scene(rng, instruction), seed=room)
        length = int(rng.integers(1, config.window_size + 1))
        static = length == 1 or rng.random() < static_fraction
        window = [scene] if static else synthetic.drift(scene, rng, length,
                                                        float(rng.uniform(0.005, 0.03)))
        start = len(frames)
        frames += [to_model_input(synthetic.render(s), config.image_size) for s in window]
        target = synthetic.target_velocity(scene) / scale(config)
        if np.abs(target).max() > 1.0:
            raise ValueError(f"normalized target {target} of {scene} leaves the tanh range")
        targets.append(target.astype(np.float32))
        ids = prompts.setdefault(scene.instruction, tokenizer.encode(scene.instruction))
        key = (len(ids), length, len(window))
        buckets.setdefault(key, []).append((i, start, scene.instruction))
    return {"frames": torch.from_numpy(np.stack(frames)), "targets": torch.from_numpy(
        np.stack(targets)), "prompts": {k: torch.from_numpy(v) for k, v in prompts.items()},
        "buckets": buckets}


def batches(data: dict, batch_size: int, rng: np.random.Generator) -> list:
    """One epoch of batches, each from one bucket (same prompt and window length), shuffled."""
    out = []
    for (_, length, distinct), items in sorted(data["buckets"].items()):
        order = rng.permutation(len(items))
        out += [(length, distinct, [items[j] for j in order[k:k + batch_size]])
                for k in range(0, len(items), batch_size)
                if k == 0 or len(items) - k >= batch_size // 2]  # drop small remainders
    return [out[j] for j in rng.permutation(len(out))]


def predict(model: MobileVLAPolicy, data: dict, length: int, distinct: int, items: list,
            mirror: bool = False):
    """Normalized actions (B, 3) and targets for a batch, the way the runtime computes them.

    ``mirror`` flips the frames left-right: a mirrored scene is as valid as the original, its
    "go to" turn is negated and everything else is unchanged. It doubles the scenes the policy
    sees at no rendering cost and removes any left/right bias of the training set.
    """
    images = torch.cat([data["frames"][start:start + distinct] for _, start, _ in items])
    targets = data["targets"][[i for i, _, _ in items]]
    if mirror:
        images = images.flip(2)
        sign = torch.tensor([-1.0 if instruction in synthetic.GO_TO else 1.0
                             for _, _, instruction in items])
        targets = torch.stack([targets[:, 0], targets[:, 1], targets[:, 2] * sign], dim=1)
    ids = torch.stack([data["prompts"][instruction] for _, _, instruction in items])
    features = model.encode_frame(images, ids.repeat_interleave(distinct, dim=0))
    features = features.view(len(items), distinct, -1)
    if distinct == 1:
        features = features.expand(-1, length, -1)
    actions, _, _ = model.decode(features, *model.zero_state(len(items)))
    return actions[:, 0], targets


def velocity_fn(model: MobileVLAPolicy, tokenizer: PromptTokenizer, config):
    """``infer(rgb, instruction) -> velocity``: one frame's feature repeated over the window."""
    factors = scale(config)
    cache: dict = {}

    @torch.inference_mode()
    def infer(rgb: np.ndarray, instruction: str) -> np.ndarray:
        ids = cache.setdefault(instruction, torch.from_numpy(tokenizer.encode(instruction))[None])
        image = torch.tensor(to_model_input(rgb, config.image_size))[None]
        feature = model.encode_frame(image, ids)
        window = feature[:, None].expand(1, config.window_size, -1)
        actions, _, _ = model.decode(window, *model.zero_state(1))
        return actions[0, 0].numpy().astype(np.float64) * factors

    return infer


def build(config, tokenizer: PromptTokenizer, seed: int) -> MobileVLAPolicy:
    """The policy as `load_policy` builds it (seeded random weights)."""
    torch.manual_seed(seed)
    return MobileVLAPolicy(config, tokenizer.prefix_ids, tokenizer.image_end_id,
                           tokenizer.special_ids["<pad>"])


def init_for_training(model: MobileVLAPolicy, seed: int) -> None:
    """Re-initialize the text side and the action head so a 64-wide model trains in minutes.

    * Kosmos-2 initializes every text and image-to-text weight with std 0.02, tuned for width
      2048; at width 64 each attention/FFN branch then passes on ~2.5% of its input and the
      action token's feature barely depends on the image or the command. Use LeCun-normal
      weights (std = fan_in ** -0.5) and token embeddings whose scaled size is about 1.
    * PyTorch's default LSTM init shrinks the signal ~10x per layer here (the 2-layer LSTM's
      output is nearly constant), which stalls training for a long time. Use unit-variance input
      weights, orthogonal recurrent blocks, a forget-gate bias of 1, and He-normal MLP weights.

    * The vision tower keeps its CLIP-style init except for the position embeddings (below).
    """
    torch.manual_seed(seed)
    backbone = model.backbone
    text = backbone.text_model.model
    for module in (text, backbone.image_to_text_projection):
        for sub in module.modules():
            if isinstance(sub, torch.nn.Linear):
                torch.nn.init.normal_(sub.weight, std=sub.in_features ** -0.5)
                if sub.bias is not None:
                    torch.nn.init.zeros_(sub.bias)
    torch.nn.init.normal_(text.embed_tokens.weight, std=1.0 / text.embed_scale)
    # The patch features reach the resampler L2-normalized (norm 1, ~0.125 a dimension) while
    # its latent queries are N(0, 1): scale the projection so both are ~1 a dimension, or the
    # resampler's attention and output are dominated by the latents and ignore the image.
    torch.nn.init.normal_(backbone.image_to_text_projection.dense.weight, std=1.0)
    # CLIP's position embeddings start at std 0.02 against patch features of std ~1: where a
    # box is would be nearly invisible to attention. Start them at the patches' scale.
    torch.nn.init.normal_(backbone.vision_model.model.embeddings.position_embedding.weight,
                          std=1.0)
    rnn = model.act_head.rnn
    hidden = rnn.hidden_size
    with torch.no_grad():
        torch.nn.init.normal_(model.action_token, std=1.0 / text.embed_scale)
        for name, param in rnn.named_parameters():
            if name.startswith("weight_hh"):
                for gate in range(4):  # input, forget, cell, output blocks
                    torch.nn.init.orthogonal_(param[gate * hidden:(gate + 1) * hidden])
            elif name.startswith("weight_ih"):
                torch.nn.init.normal_(param, std=param.shape[1] ** -0.5)
            else:
                torch.nn.init.zeros_(param)
                if name.startswith("bias_ih"):
                    param[hidden:2 * hidden] = 1.0
    for sub in model.act_head.actions.modules():
        if isinstance(sub, torch.nn.Linear):
            torch.nn.init.normal_(sub.weight, std=(2.0 / sub.in_features) ** 0.5)
            torch.nn.init.zeros_(sub.bias)


def train(model: MobileVLAPolicy, data: dict, steps: int, lr: float, batch_size: int,
          vision_lr_scale: float, seed: int, log_every: int, t0: float) -> None:
    """AdamW with warm-up and cosine decay, MSE on normalized actions, half the batches mirrored.

    The vision tower (ViT) trains at ``lr * vision_lr_scale`` (0: frozen); everything else,
    the image-to-text resampler included, at ``lr``.
    Dropout stays off (eval mode; the policy has no batch norm): with a few thousand steps on
    fresh synthetic scenes it only slows learning down.
    """
    model.eval()
    vision = [p for n, p in model.named_parameters() if n.startswith(VISION_PREFIX)]
    seen = {id(p) for p in vision}
    groups = [{"params": [p for p in model.parameters() if id(p) not in seen], "lr": lr}]
    if vision_lr_scale > 0:
        groups.append({"params": vision, "lr": lr * vision_lr_scale})
    else:
        for p in vision:
            p.requires_grad_(False)
    opt = torch.optim.AdamW(groups, weight_decay=0.01, foreach=True)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1.0 + np.cos(np.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    queue: list = []
    running = 0.0
    for step in range(1, steps + 1):
        if not queue:
            queue = batches(data, batch_size, rng)
        actions, targets = predict(model, data, *queue.pop(), mirror=bool(rng.random() < 0.5))
        loss = torch.nn.functional.mse_loss(actions, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            print(f"step {step:4d}/{steps}  loss {running / n:.4f}  lr "
                  f"{sched.get_last_lr()[0]:.2e}  elapsed {time.perf_counter() - t0:.0f} s",
                  flush=True)
            running = 0.0
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()


def _summary(results: dict) -> dict:
    """Rounded `synthetic.evaluate` results of each policy."""
    def rounded(value):
        if isinstance(value, float):
            return round(value, 5)
        if isinstance(value, list):
            return [round(v, 5) for v in value]
        if isinstance(value, dict):
            return {k: round(v, 5) for k, v in value.items()}
        return value

    return {name: {k: rounded(v) for k, v in res.items()} for name, res in results.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_POLICY_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=4000, help="training windows rendered")
    parser.add_argument("--rooms", type=int, default=300,
                        help="distinct room looks (walls, lighting, noise) among them")
    parser.add_argument("--goal-weight", type=int, default=4,
                        help="how many times more often each 'go to' command is drawn")
    parser.add_argument("--static-fraction", type=float, default=0.6,
                        help="share of multi-frame windows that repeat one frame's feature")
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vision-lr-scale", type=float, default=0.0,
                        help="ViT learning rate relative to --lr (0: frozen)")
    parser.add_argument("--eval-n", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)  # denormals in Adam's moments slow x86 CPUs a lot
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)

    config = preset_config("tiny")
    tokenizer = PromptTokenizer(builtin_tokenizer(), config.prompt_template, config.pad_to)
    for instruction in synthetic.INSTRUCTIONS:
        unknown = [t for t in tokenizer.tokenizer.encode(instruction).tokens if t == "<unk>"]
        if unknown:
            raise SystemExit(f"instruction {instruction!r} has words outside the tokenizer")

    data = make_dataset(args.scenes, TRAIN_SEED_OFFSET + args.seed, config, tokenizer,
                        args.static_fraction, args.goal_weight, args.rooms)
    print(f"rendered {len(data['targets'])} windows, {len(data['frames'])} frames in "
          f"{time.perf_counter() - t0:.1f} s; buckets (prompt len, window): "
          f"{ {k: len(v) for k, v in sorted(data['buckets'].items())} }", flush=True)

    model = build(config, tokenizer, args.seed)
    init_for_training(model, args.seed)
    t_train = time.perf_counter()
    train(model, data, args.steps, args.lr, args.batch_size, args.vision_lr_scale, args.seed,
          args.log_every, t0)
    train_s = time.perf_counter() - t_train

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "model.safetensors"
    save_safetensors(model, weights)
    weights.chmod(0o644)  # safetensors writes 0600; this file ships in the package
    size = weights.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise SystemExit(f"{weights} is {size} bytes (limit {MAX_WEIGHTS_BYTES})")
    config.save(args.out / "config.json")
    tokenizer.tokenizer.save(str(args.out / "tokenizer.json"))

    print("evaluating on held-out scenes ...", flush=True)
    random_model = build(config, tokenizer, RANDOM_SEED).eval()
    policies = {"trained": velocity_fn(model, tokenizer, config),
                "random_weights": velocity_fn(random_model, tokenizer, config),
                "zero": lambda rgb, instruction: np.zeros(3)}
    heldout = {n: {name: synthetic.evaluate(fn, n=n, seed=EVAL_SEED)
                   for name, fn in policies.items()} for n in sorted({args.eval_n, 100})}
    metrics = {
        "description": "held-out MAE (m/s, rad/s) of synthetic.evaluate(seed=12345) scenes; "
                       "inference: to_model_input(640x480 render, 224) -> encode_frame -> "
                       "decode over the window filled with that frame's feature (window_size) "
                       "-> normalized * [max_linear, max_linear, max_angular]",
        **{("heldout" if n == args.eval_n else f"heldout_{n}"): _summary(res)
           for n, res in heldout.items()},
        "training": {"steps": args.steps, "seconds": round(train_s, 1),
                     "total_seconds": round(time.perf_counter() - t0, 1), "seed": args.seed,
                     "scenes": args.scenes, "rooms": args.rooms, "frames": len(data["frames"]),
                     "goal_weight": args.goal_weight, "static_fraction": args.static_fraction,
                     "batch_size": args.batch_size, "lr": args.lr,
                     "vision_lr_scale": args.vision_lr_scale,
                     "loss": "mse on normalized actions", "mirror": "half the batches",
                     "normalization": {"max_linear": config.max_linear,
                                       "max_angular": MAX_ANGULAR},
                     "threads": args.threads, "torch": torch.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0],
                     "command": "scripts/train_demo_policy.py " + " ".join(argv or sys.argv[1:])},
        "weights_bytes": size,
    }
    if args.eval_n != 100:
        metrics["heldout_100"]["note"] = "the first 100 scenes of 'heldout' (the test's set)"
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name, res in heldout[args.eval_n].items():
        print(f"held-out MAE (n={args.eval_n}) {name:15s} {res['mae']:.4f}  per axis "
              f"{np.round(res['mae_per_axis'], 4).tolist()}")
    print(f"wrote {args.out} ({size} bytes of weights) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
