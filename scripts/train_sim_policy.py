#!/usr/bin/env python3
"""Train the sim policy (``tiny`` preset) on MuJoCo renders of the scripted expert; CPU, seeded.

Writes ``mobile_vla_node/model/sim_policy/{model.safetensors, config.json, tokenizer.json,
metrics.json}``: a second embedded policy beside the demo policy (which `make demo` keeps).

Data: episodes drawn like the ``demo`` suite (three coloured boxes, "go to the X box") but from
other seeds and wider start poses, driven by the expert with noise injection (DART: an
Ornstein-Uhlenbeck offset on the executed command, the label stays the expert's), so the policy
sees off-path states and how to recover. Each success lingers 1.5 s (labels: stay stopped).
Frames at the camera rate (10 fps, 320x240, resized to 224 as the node does); windows of
1..window_size consecutive frames end at each frame, the runtime's layout (`encode_frame` per
frame, `decode` from a zero state), as in ``scripts/train_demo_policy.py``, whose model builder,
batching and optimizer recipe this reuses (the frozen ViT's outputs are computed once per frame
and cached, normal and mirrored, so each step trains the resampler, text model and head only).
It starts from the demo policy's weights (it already
reads "go to the X box" on coloured boxes), keeps the ViT frozen, and mirrors half the batches
(image flipped, linear_y and angular_z negated). Optional DAgger rounds (--dagger) run the
policy in the sim and label the states it visits with the expert.

    .venv/bin/python scripts/train_sim_policy.py     # ~15-25 min on 2 shared CPU cores
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_demo_policy as tdp  # noqa: E402

from mobile_vla_node.core.preprocess import to_model_input  # noqa: E402
from mobile_vla_node.model.checkpoint import save_safetensors  # noqa: E402
from mobile_vla_node.model.presets import DEMO_POLICY_DIR, preset_config  # noqa: E402
from mobile_vla_node.model.tokenizer import PromptTokenizer, builtin_tokenizer  # noqa: E402
from mobile_vla_node.sim import suites  # noqa: E402
from mobile_vla_node.sim.expert import Expert  # noqa: E402
from mobile_vla_node.sim.rollout import NoiseInjection, run_expert, run_policy  # noqa: E402
from mobile_vla_node.sim.world import World  # noqa: E402

SIM_POLICY_DIR = DEMO_POLICY_DIR.parent / "sim_policy"
CONTROL_DT, CAMERA_DT = 0.05, 0.1


def training_episodes(n: int, seed: int) -> list:
    """``n`` demo-like episodes (seeds apart from the shipped suite's) with wider start poses."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        color = suites.COLORS[i % 3]
        raw = suites._demo_episode(rng, color, i)
        raw["start"] = [float(rng.uniform(-0.5, 0.5)), float(rng.uniform(-0.6, 0.6)),
                        float(rng.uniform(-0.5, 0.5))]
        raw["name"] = f"train_{i:04d}"
        out.append(raw)
    return suites.parse({"name": "train", "episodes": out}, "train").episodes


class Data:
    """Frames (uint8 224x224 NHWC), normalized targets and window buckets, grown per episode."""

    def __init__(self, config, tokenizer: PromptTokenizer, rng: np.random.Generator):
        self.config, self.tokenizer, self.rng = config, tokenizer, rng
        self.frames: list = []
        self.vision: list = []
        self.targets: list = []
        self.prompts: dict = {}
        self.buckets: dict = {}
        self.factors = tdp.scale(config)

    def add_episode(self, instruction: str, frames: list, labels: list) -> None:
        """One trajectory: a window ending at every frame, of random length 1..window_size."""
        base = len(self.frames)
        self.frames += frames
        ids = self.prompts.setdefault(instruction, self.tokenizer.encode(instruction))
        for j, label in enumerate(labels):
            target = np.clip(np.asarray(label) / self.factors, -0.98, 0.98).astype(np.float32)
            index = len(self.targets)
            self.targets.append(target)
            longest = min(self.config.window_size, j + 1)
            length = longest if self.rng.random() < 0.7 else int(self.rng.integers(1, longest + 1))
            key = (len(ids), length, length)
            self.buckets.setdefault(key, []).append((index, base + j - length + 1, instruction))

    def tensors(self, model) -> dict:
        """The dict `train_demo_policy.batches` and `predict` read (ViT outputs cached)."""
        new = self.frames[len(self.vision):]
        if new:
            self.vision += list(vision_cache(model, new).unbind(0))
        return {"vision": torch.stack(self.vision),
                "targets": torch.from_numpy(np.stack(self.targets)),
                "prompts": {k: torch.from_numpy(v) for k, v in self.prompts.items()},
                "buckets": self.buckets}


def collect_expert(world: World, episodes: list, data: Data, rng: np.random.Generator,
                   noise_scales=(0.0, 0.7, 1.0, 1.4)) -> dict:
    """Expert rollouts with noise injection into ``data``; success counts."""
    stats = {"episodes": 0, "success": 0, "frames": 0}
    for i, ep in enumerate(episodes):
        frames, labels = [], []
        scale = noise_scales[i % len(noise_scales)]
        noise = NoiseInjection(rng, sigma=np.array((0.12, 0.08, 0.35)) * scale,
                               dt=CONTROL_DT) if scale > 0 else None

        def on_frame(t, rgb, label, executed, frames=frames, labels=labels):
            frames.append(to_model_input(rgb, data.config.image_size))
            labels.append(label)

        r = run_expert(world, "train", ep, CONTROL_DT, CAMERA_DT, on_frame, noise, linger_s=1.5)
        data.add_episode(ep.instruction, frames, labels)
        stats["episodes"] += 1
        stats["success"] += int(r.success)
        stats["frames"] += len(frames)
    return stats


def policy_step(model, tokenizer, config):
    """``step(rgb) -> twist`` with the runtime's history ring (window_size - 1 past features)."""
    factors = tdp.scale(config)
    state = {"history": [], "ids": None}

    def reset(instruction: str):
        state["history"] = []
        state["ids"] = torch.from_numpy(tokenizer.encode(instruction))[None]

    @torch.inference_mode()
    def step(rgb: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(to_model_input(rgb, config.image_size))[None]
        feature = model.encode_frame(image, state["ids"])
        window = torch.stack(state["history"] + [feature[0]])[None]
        actions, _, _ = model.decode(window, *model.zero_state(1))
        state["history"] = (state["history"] + [feature[0]])[-(config.window_size - 1):]
        return actions[0, 0].numpy().astype(np.float64) * factors

    return step, reset


def collect_dagger(world: World, episodes: list, data: Data, model, tokenizer, config,
                   beta: float, rng: np.random.Generator) -> dict:
    """DAgger: the policy (mixed with the expert at ``beta``) drives; the expert labels."""
    step, reset = policy_step(model, tokenizer, config)
    stats = {"episodes": 0, "success": 0, "frames": 0}
    for ep in episodes:
        reset(ep.instruction)
        expert = Expert(ep)
        frames, labels = [], []

        def mixed(rgb, frames=frames, labels=labels, expert=expert):
            label = expert.act(world.pose)
            frames.append(to_model_input(rgb, config.image_size))
            labels.append(label)
            action = step(rgb)
            return label if rng.random() < beta else action

        r = run_policy(world, "dagger", ep, mixed, CONTROL_DT, CAMERA_DT)
        data.add_episode(ep.instruction, frames, labels)
        stats["episodes"] += 1
        stats["success"] += int(r.success)
        stats["frames"] += len(frames)
    return stats


@torch.no_grad()
def vision_cache(model, frames: list, batch: int = 64) -> torch.Tensor:
    """The frozen ViT's normalized patch embeddings of each frame and of its mirror image.

    The vision tower does not train, so its output (post-layernorm, L2-normalized: the input of
    the trainable image-to-text resampler, `MobileVLAPolicy.image_embeds`) is computed once:
    (N, 2, patches + 1, width), index 1 = the frame flipped left-right.
    """
    out = []
    for k in range(0, len(frames), batch):
        images = torch.from_numpy(np.stack(frames[k:k + batch]))
        pair = []
        for imgs in (images, images.flip(2)):
            vision = model.backbone.vision_model(pixel_values=model.normalize_image(imgs))[0]
            embeds = model.backbone.vision_model.model.post_layernorm(vision)
            pair.append(torch.nn.functional.normalize(embeds, dim=-1))
        out.append(torch.stack(pair, dim=1))
    return torch.cat(out)


def predict(model, data: dict, length: int, distinct: int, items: list, mirror: bool = False):
    """`train_demo_policy.predict` on cached ViT outputs; a mirror also negates linear_y."""
    rows = torch.cat([torch.arange(start, start + distinct) for _, start, _ in items])
    normed = data["vision"][rows, int(mirror)]
    targets = data["targets"][[i for i, _, _ in items]]
    if mirror:
        targets = targets * torch.tensor([1.0, -1.0, -1.0])
    ids = torch.stack([data["prompts"][instruction] for _, _, instruction in items])
    image_embeds = model.backbone.image_to_text_projection(normed)[0]
    embeds, mask, positions = model.text_sequence(image_embeds,
                                                  ids.repeat_interleave(distinct, dim=0))
    hidden = model.backbone.text_model.model(inputs_embeds=embeds, attention_mask=mask,
                                             position_ids=positions).last_hidden_state
    features = hidden[:, -1].view(len(items), distinct, -1)
    if distinct == 1:
        features = features.expand(-1, length, -1)
    actions, _, _ = model.decode(features, *model.zero_state(len(items)))
    return actions[:, 0], targets


def train(model, data: dict, steps: int, lr: float, batch_size: int, seed: int,
          log_every: int, t0: float) -> list:
    """`train_demo_policy.train`'s recipe (AdamW, warm-up + cosine, frozen ViT, clipped grads)."""
    model.eval()
    vision = [p for n, p in model.named_parameters() if n.startswith(tdp.VISION_PREFIX)]
    for p in vision:
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, foreach=True)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1.0 + np.cos(np.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    queue: list = []
    running, log = 0.0, []
    for step in range(1, steps + 1):
        if not queue:
            queue = tdp.batches(data, batch_size, rng)
        actions, targets = predict(model, data, *queue.pop(), mirror=bool(rng.random() < 0.5))
        loss = torch.nn.functional.mse_loss(actions, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            log.append({"step": step, "loss": round(running / n, 5)})
            print(f"step {step:4d}/{steps}  loss {running / n:.4f}  elapsed "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            running = 0.0
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return log


def evaluate(world: World, model, tokenizer, config, episodes: int = 0,
             suite_name: str = "demo") -> dict:
    """In-process closed loop on a suite (no node): success per instruction."""
    step, reset = policy_step(model, tokenizer, config)
    suite = suites.load(suite_name)
    per: dict = {}
    for ep in suite.episodes[:episodes or None]:
        reset(ep.instruction)
        r = run_policy(world, suite_name, ep, step, CONTROL_DT, CAMERA_DT)
        per.setdefault(ep.instruction, []).append(r.outcome)
    total = sum(o == "success" for v in per.values() for o in v)
    n = sum(len(v) for v in per.values())
    return {"success_rate": round(total / n, 4), "episodes": n,
            "per_instruction": {k: {"success": sum(o == "success" for o in v), "n": len(v),
                                    "outcomes": v} for k, v in per.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SIM_POLICY_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=90, help="expert episodes (noisy)")
    parser.add_argument("--dagger", type=int, default=1, help="DAgger rounds after the first fit")
    parser.add_argument("--dagger-episodes", type=int, default=45)
    parser.add_argument("--steps", type=int, default=900, help="optimizer steps per fit")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-episodes", type=int, default=6,
                        help="in-process check on the first N demo-suite episodes (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)

    config = preset_config("tiny")
    demo_config = json.loads((DEMO_POLICY_DIR / "config.json").read_text())
    tokenizer = PromptTokenizer(builtin_tokenizer(), config.prompt_template, config.pad_to)
    world = World(args.width, args.height)
    data = Data(config, tokenizer, rng)
    episodes = training_episodes(args.episodes + args.dagger * args.dagger_episodes,
                                 tdp.TRAIN_SEED_OFFSET + args.seed)
    collected = [collect_expert(world, episodes[:args.episodes], data, rng)]
    print(f"expert data: {collected[0]} in {time.perf_counter() - t0:.0f} s", flush=True)
    # (the frozen ViT's outputs are cached once per frame: `vision_cache`)

    from safetensors.torch import load_file

    model = tdp.build(config, tokenizer, args.seed)
    model.load_state_dict(load_file(str(DEMO_POLICY_DIR / "model.safetensors")))
    logs = []
    fits = []
    for round_ in range(args.dagger + 1):
        if round_:
            lo = args.episodes + (round_ - 1) * args.dagger_episodes
            stats = collect_dagger(world, episodes[lo:lo + args.dagger_episodes], data, model,
                                   tokenizer, config, beta=0.3 / round_, rng=rng)
            collected.append(stats)
            print(f"DAgger round {round_}: {stats} in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        t_fit = time.perf_counter()
        logs.append(train(model, data.tensors(model), args.steps, args.lr, args.batch_size,
                          args.seed + round_, args.log_every, t0))
        fits.append(round(time.perf_counter() - t_fit, 1))

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "model.safetensors"
    save_safetensors(model, weights)
    weights.chmod(0o644)
    size = weights.stat().st_size
    if size > tdp.MAX_WEIGHTS_BYTES:
        raise SystemExit(f"{weights} is {size} bytes (limit {tdp.MAX_WEIGHTS_BYTES})")
    # The demo policy's config.json as it is in the tree (same format, token_layout if any).
    (args.out / "config.json").write_text(json.dumps(demo_config, indent=2) + "\n")
    tokenizer.tokenizer.save(str(args.out / "tokenizer.json"))

    print("closed-loop check in-process on the demo suite ...", flush=True)
    check = evaluate(world, model, tokenizer, config, args.eval_episodes)
    metrics = {
        "description": "sim policy: tiny preset fine-tuned from the demo policy on MuJoCo renders "
                       "of the scripted expert (noise injection + DAgger); in-process closed-loop "
                       "success on the demo suite (the node's figures: docs/SIM.md)",
        "inprocess_demo_suite": check,
        "training": {"expert_episodes": args.episodes, "dagger_rounds": args.dagger,
                     "dagger_episodes": args.dagger_episodes, "collected": collected,
                     "frames": len(data.frames), "steps_per_fit": args.steps,
                     "fit_seconds": fits, "batch_size": args.batch_size, "lr": args.lr,
                     "seed": args.seed, "camera": f"{args.width}x{args.height} @ "
                     f"{1 / CAMERA_DT:g} fps", "loss_log": logs,
                     "total_seconds": round(time.perf_counter() - t0, 1),
                     "threads": args.threads, "torch": torch.__version__,
                     "python": sys.version.split()[0],
                     "command": "scripts/train_sim_policy.py " + " ".join(argv or sys.argv[1:])},
        "weights_bytes": size,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"in-process demo suite success {check['success_rate']:.2%}; wrote {args.out} in "
          f"{time.perf_counter() - t0:.0f} s")
    world.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
