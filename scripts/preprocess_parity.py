"""Torch (CPU or GPU) resize vs PIL: uint8 differences, the effect on actions, and the cost.

    PYTHONPATH=. python scripts/preprocess_parity.py --device cpu --json out.json

Frames: 40 synthetic demo scenes (mobile_vla_node.demo.synthetic, 640x480), one uniform-noise
frame and one gradient frame with hard wrap-around edges, at 640x480 and 1280x720. For each:
`core.preprocess.to_model_input` (PIL) vs `backends.torch_preprocess.resize_like_pil` on
``--device``. Actions: the shipped demo policy (tiny, trained) on both inputs of every scene, fp32
on the CPU, a window of 8 copies of the frame's feature (a still robot), as
test/test_demo_policy.py does. Cost: per-call p50/p99 of PIL on the CPU and of the torch path
(upload of the uint8 frame included, synchronized on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobile_vla_node.backends.torch_preprocess import resize_like_pil  # noqa: E402
from mobile_vla_node.core.preprocess import to_model_input  # noqa: E402

SIZE = 224
N_SCENES = 40


def frames(width: int, height: int) -> dict[str, np.ndarray]:
    """Named test frames at one resolution."""
    from mobile_vla_node.demo import synthetic

    rng = np.random.default_rng(7)
    out = {f"scene_{i}": synthetic.render(synthetic.random_scene(rng), width, height)
           for i in range(N_SCENES)}
    out["noise"] = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    out["gradient_wrap"] = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1),
                                     (xx + yy) % 256], -1).astype(np.uint8)
    return out


def torch_resize(torch, rgb: np.ndarray, device: str) -> np.ndarray:
    """One frame through the device path, back as numpy."""
    x = torch.from_numpy(rgb).to(device)[None]
    return resize_like_pil(x, SIZE)[0].cpu().numpy()


def timing(fn, sync, iters: int) -> dict:
    """p50/p99 in ms of ``fn`` (after 5 warm-up calls)."""
    for _ in range(5):
        fn()
    sync()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": float(np.percentile(samples, 50)),
            "p99_ms": float(np.percentile(samples, 99)), "iters": iters}


def action_effect(torch, scenes: dict, device: str) -> dict:
    """Max/mean abs action difference of the demo policy, PIL input vs torch-resized input."""
    from mobile_vla_node.model.loader import ModelSource, load_policy

    loaded = load_policy(ModelSource(preset="tiny"))
    model, tok = loaded.model, loaded.tokenizer
    window = loaded.config.window_size
    diffs, feat_diffs = [], []
    with torch.inference_mode():
        ids = torch.from_numpy(tok.encode("go to the red box"))[None]
        for rgb in scenes.values():
            outs = []
            for image in (to_model_input(rgb, SIZE), torch_resize(torch, rgb, device)):
                feature = model.encode_frame(torch.from_numpy(image)[None], ids)
                actions, _, _ = model.decode(feature[:, None].expand(1, window, -1),
                                             *model.zero_state(1))
                outs.append((feature[0].numpy(), actions[0].numpy()))
            feat_diffs.append(np.abs(outs[0][0] - outs[1][0]).max())
            diffs.append(np.abs(outs[0][1] - outs[1][1]))
    d = np.stack(diffs)
    return {"policy": "tiny demo policy (trained), fp32 CPU", "frames": len(diffs),
            "actions_max_abs": float(d.max()), "actions_mean_abs": float(d.mean()),
            "feature_max_abs": float(np.max(feat_diffs))}


def main(argv=None) -> int:
    """Measure and print a Markdown table; write JSON with --json."""
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"preprocess_parity: --device {args.device} but torch sees no CUDA device",
              file=sys.stderr)
        return 2

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    result = {"device": args.device, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(),
              "loadavg_start": list(os.getloadavg()), "resolutions": {}}
    for width, height in ((640, 480), (1280, 720)):
        named = frames(width, height)
        rows = {}
        for kind, keys in (("synthetic scenes", [k for k in named if k.startswith("scene_")]),
                           ("uniform noise", ["noise"]), ("gradient, wrap edges",
                                                          ["gradient_wrap"])):
            d = np.concatenate([np.abs(to_model_input(named[k], SIZE).astype(np.int16)
                                       - torch_resize(torch, named[k], args.device)
                                       .astype(np.int16)).ravel() for k in keys])
            rows[kind] = {"frames": len(keys), "max_levels": int(d.max()),
                          "mean_levels": float(d.mean()), "differing_fraction": float(
                              (d > 0).mean())}
        rgb = named["scene_0"]
        pinned = torch.from_numpy(rgb)
        if args.device.startswith("cuda"):
            pinned = pinned.pin_memory()
        cost = {
            "pil_cpu": timing(lambda rgb=rgb: to_model_input(rgb, SIZE), sync, args.iters),
            f"torch_{args.device}_incl_upload": timing(
                lambda p=pinned: resize_like_pil(p.to(args.device, non_blocking=True)[None],
                                                 SIZE), sync, args.iters)}
        result["resolutions"][f"{width}x{height}"] = {"diff": rows, "cost": cost}
        if (width, height) == (640, 480):
            result["actions"] = action_effect(torch, {k: v for k, v in named.items()
                                                      if k.startswith("scene_")}, args.device)
    result["loadavg_end"] = list(os.getloadavg())
    print(f"| resolution | frames | n | max diff (uint8 levels) | mean diff | pixels differing |"
          f" (device {args.device}, torch {torch.__version__})")
    print("|---|---|---|---|---|---|")
    for res, r in result["resolutions"].items():
        for kind, row in r["diff"].items():
            print(f"| {res} | {kind} | {row['frames']} | {row['max_levels']} | "
                  f"{row['mean_levels']:.4f} | {100 * row['differing_fraction']:.2f} % |")
    print("\n| resolution | path | p50 ms | p99 ms |\n|---|---|---|---|")
    for res, r in result["resolutions"].items():
        for path, t in r["cost"].items():
            print(f"| {res} | {path} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} |")
    a = result["actions"]
    print(f"\nactions ({a['policy']}, {a['frames']} scenes 640x480): max abs "
          f"{a['actions_max_abs']:.2e}, mean abs {a['actions_mean_abs']:.2e}; feature max abs "
          f"{a['feature_max_abs']:.2e}")
    print(f"load average start {result['loadavg_start']} end {result['loadavg_end']}, "
          f"torch threads {result['torch_threads']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
