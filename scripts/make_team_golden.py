#!/usr/bin/env python3
"""Make the golden fixture test/data/team_golden/ by running the TEAM's own code.

Nothing of the team's code is in this repository: it is read from local checkouts given on the
command line and run in a separate environment that has what it needs (their pins:
transformers 4.41.2, lightning, ...):

    /work/ext/teamenv/bin/python scripts/make_team_golden.py \
        --robovlms /work/ext/RoboVLMs --vla /work/ext/vla --out test/data/team_golden

``--robovlms``: a checkout of github.com/minuum/RoboVLMs (its git history must be readable with
``--robovlms-git``, default ``DIR/.git``, to take both versions of their H5 dataset).
``--vla``: a folder holding, at their paths, minuum/vla ``Mobile_VLA/inference_server.py``,
``Mobile_VLA/action_buffer.py`` and ``Mobile_VLA/configs/mobile_vla_left_chunk10_20251218.json``.

What it does (nothing is trained, nothing is downloaded):

1. a tiny random Kosmos-2 at the node's ``tiny`` preset sizes, saved as a Hugging Face folder
   with the shared tiny Kosmos-2-style tokenizer (test/kosmos_tokenizer.py) passed once through
   their environment's ``Kosmos2Processor`` (which adds Kosmos-2's remaining tag tokens and 16
   patch-index tokens after the existing ids);
2. their ``MobileVLATrainer`` built from their config ``mobile_vla_left_chunk10_20251218.json``
   pointed at that folder, saved with Lightning's own ``Trainer.save_checkpoint``: once as is
   (``MobileVLALSTMDecoder``, regression) and once with ``MobileVLAClassificationDecoder``
   (9 classes, ``inference_mode: classification``, the server's default class table);
3. their inference server class ``MobileVLAInference`` on fixed 640x480 frames with a short and
   a long instruction, recording per frame the whole action chunk that their model returned (the
   server itself keeps only chunk[0]) and the server's published action;
4. for their H5 dataset before and since commit 6423566 (2026-02-03): their dataset class of that
   version reads an H5 episode holding the same frames; their model's per-frame inference call
   (the same call the server makes) runs on those pixels.

Their server converts the model to float16 (``self.model.model.half()``); this script runs it in
float32 (``torch.nn.Module.half`` is a no-op while the server loads), the precision the node's
targets are stated in. Everything else runs unchanged. meta.json records the commits, the command,
the versions and every deviation.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import importlib.machinery
import importlib.util
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG_REL = "Mobile_VLA/configs/mobile_vla_left_chunk10_20251218.json"
SERVER_REL = "Mobile_VLA/inference_server.py"
H5_REL = "robovlms/data/mobile_vla_h5_dataset.py"
H5_CHANGE = "6423566"          # "Fix: Image normalization ..." (2026-02-03)
N_FRAMES = 12                  # window_size 8: frames 9-12 overflow the window
WIDTH, HEIGHT = 640, 480
HEAD_HIDDEN = 64               # their config: 512 (a 4-layer LSTM of 512 would not fit)
NUM_CLASSES = 9                # their server's default class_map has 9 classes
INSTRUCTIONS = {
    # <s> <grounding> An image of a robot ... </s>: 13 tokens < latent_query_num 16
    "short": "go to the gray basket",
    # 26 tokens > 16: the tail of this prompt is not overwritten by image tokens
    "long": "Navigate to the gray basket on the left and then turn right to the red box and stop",
}
SAME_LENGTH_INSTRUCTION = "go to the red box"    # as many tokens as INSTRUCTIONS["short"]
TOKENIZER_PATCH_TOKENS = 16


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--robovlms", required=True, type=Path, help="minuum/RoboVLMs checkout")
    p.add_argument("--robovlms-git", type=Path, default=None,
                   help="its git dir (default DIR/.git) for the two H5 dataset versions")
    p.add_argument("--vla", required=True, type=Path, help="folder with minuum/vla files")
    p.add_argument("--out", required=True, type=Path, help="fixture folder (replaced)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Environment: their imports
# ---------------------------------------------------------------------------------------------
def install_import_stubs() -> list:
    """Stub import-level modules their code imports but never calls here; return what was done."""
    done = []
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:   # CUDA torchvision wheel beside a CPU torch: ops library absent
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType(
            "torchvision._meta_registrations")
        import torchvision  # noqa: F401,F811
        done.append(f"torchvision._meta_registrations: empty module (torch.compile fake-tensor "
                    f"registrations of torchvision's C++ ops, which could not load: {exc}); "
                    "only torchvision.transforms runs")
    try:
        import datasets  # noqa: F401
    except ImportError:
        import transformers  # noqa: F401  (before the stub: it probes for `datasets`)

        stub = types.ModuleType("datasets")
        stub.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
        sys.modules["datasets"] = stub
        done.append("datasets (Hugging Face): empty module; imported at the top of "
                    "robovlms/data/it_dataset.py, used only inside its image-text dataset")
    return done


def git(git_dir: Path, *args) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True,
                          capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def make_frames(n: int = N_FRAMES) -> np.ndarray:
    """Deterministic smooth RGB frames (n, 480, 640, 3) uint8: a scene that drifts frame to frame.

    Gradients plus soft-edged coloured blobs (so bicubic and bilinear resizing differ, and PNG
    stays small); a blob moves so that every frame's features differ.
    """
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    frames = []
    for t in range(n):
        r = 60 + 120 * (x / WIDTH) + 40 * (y / HEIGHT) + 4 * t
        g = 170 - 90 * (y / HEIGHT) + 30 * (x / WIDTH) - 3 * t
        b = 90 + 70 * ((x + y) / (WIDTH + HEIGHT)) + 2 * t
        img = np.stack([r, g, b], axis=-1)
        blobs = ((120 + 30 * t, 260, 55, (230, 40, 40)),      # red box drifting right
                 (470, 180 + 12 * t, 70, (128, 128, 128)),    # gray basket drifting down
                 (300 - 10 * t, 380, 45, (40, 60, 220)))      # blue ball drifting left
        for cx, cy, rad, colour in blobs:
            d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            alpha = np.clip((rad - d) / 12.0, 0.0, 1.0)[..., None]
            img = img * (1 - alpha) + np.asarray(colour, dtype=np.float64) * alpha
        # Sharp-edged stripes and a checkerboard (resize filters differ most on edges), their
        # phase moving with t, and a global brightness drift.
        stripes = ((x + 3 * t) // 5) % 2 == 0
        img[:160, :, :] = np.where(stripes[:160, :, None], img[:160] * 0.35 + 150, img[:160])
        checker = (((x - 2 * t) // 7 + (y // 7)) % 2 == 0) & (y > 300) & (x > 380)
        img[checker] = 255 - img[checker]
        img = img * (0.85 + 0.03 * t)
        frames.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return np.stack(frames)


def png_bytes(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", optimize=True, compress_level=9)
    return buf.getvalue()


def tiny_backbone() -> dict:
    """The node's ``tiny`` preset Kosmos-2 sizes (mobile_vla_node/model/presets.py)."""
    sys.path.insert(0, str(REPO))
    try:
        from mobile_vla_node.model.presets import PRESETS
    finally:
        sys.path.remove(str(REPO))
    return json.loads(json.dumps(PRESETS["tiny"]["backbone"]))


def make_kosmos_folder(folder: Path) -> dict:
    """Tiny random Kosmos-2 + Kosmos-2-style processor files; return facts for meta.json."""
    import torch
    from transformers import AutoProcessor, Kosmos2Config, Kosmos2ForConditionalGeneration

    sys.path.insert(0, str(REPO / "test"))
    try:
        from kosmos_tokenizer import make_tokenizer_folder
    finally:
        sys.path.remove(str(REPO / "test"))
    make_tokenizer_folder(folder)
    clip_mean = [0.48145466, 0.4578275, 0.40821073]
    clip_std = [0.26862954, 0.26130258, 0.27577711]
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "processor_class": "Kosmos2Processor",
        "do_resize": True, "size": {"height": 224, "width": 224}, "resample": 3,
        "do_center_crop": False, "crop_size": {"height": 224, "width": 224},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": clip_mean, "image_std": clip_std, "do_convert_rgb": True}, indent=2))
    (folder / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Kosmos2Processor",
         "num_patch_index_tokens": TOKENIZER_PATCH_TOKENS}, indent=2))
    processor = AutoProcessor.from_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    backbone = tiny_backbone()
    n_tokens = len(processor.tokenizer)
    if n_tokens > backbone["text_config"]["vocab_size"]:
        raise SystemExit(f"tokenizer has {n_tokens} ids > vocab_size "
                         f"{backbone['text_config']['vocab_size']}")
    torch.manual_seed(0)
    model = Kosmos2ForConditionalGeneration(Kosmos2Config(**backbone)).eval()
    spread_weights(model, seed=1)
    model.save_pretrained(str(folder), safe_serialization=True)
    return {"tokenizer_ids": n_tokens, "backbone": backbone,
            "processor_class": type(processor).__name__,
            "tokenizer_class": type(processor.tokenizer).__name__}


def spread_weights(module, seed: int, gain: float = 1.4) -> None:
    """Redraw every weight so outputs clearly depend on pixels and prompt (still nothing trained).

    Default inits (Kosmos-2's std 0.02, their xavier heads) give near-constant tiny outputs, so a
    wrong pipeline or layout would still pass a 1e-4 comparison. Matrices: N(0, gain^2 / fan_in);
    norm weights 1 + N(0, 0.1^2); other vectors (biases, the action token) N(0, 0.1^2).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.dim() >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(noise * gain / fan_in ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def team_config(src: Path, kosmos: str, head: str) -> dict:
    """Their training JSON pointed at the tiny Kosmos-2 (the fixture-size changes listed)."""
    cfg = json.loads(src.read_text())
    cfg["model_path"] = kosmos
    cfg["model_config"] = f"{kosmos}/config.json"
    cfg["tokenizer"]["pretrained_model_name_or_path"] = kosmos
    cfg["vlm"]["pretrained_model_name_or_path"] = kosmos
    cfg["act_head"]["hidden_size"] = HEAD_HIDDEN
    if head == "classification":
        cfg["exp_name"] = cfg["exp_name"] + "_classification"
        cfg["act_head"].update(type="MobileVLAClassificationDecoder", num_classes=NUM_CLASSES,
                               action_dim=NUM_CLASSES)
        cfg["inference_mode"] = "classification"
        for key in ("train_dataset", "val_dataset"):
            cfg[key]["discrete_action"] = True
    return cfg


def save_with_lightning(cfg: dict, path: Path, seed: int):
    """Their MobileVLATrainer, saved by Lightning's Trainer.save_checkpoint (nothing trained)."""
    import lightning.pytorch as pl
    import torch
    from robovlms.train.mobile_vla_trainer import MobileVLATrainer

    torch.manual_seed(seed)
    module = MobileVLATrainer(cfg)
    # Their head and action token (the backbone comes from the folder, as in their frozen-
    # backbone training); Kosmos-2 was spread before it was saved.
    spread_weights(module.model.act_head, seed=seed)
    with torch.no_grad():
        module.model.action_token.copy_(0.1 * torch.randn(
            module.model.action_token.shape, generator=torch.Generator().manual_seed(seed + 1)))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, max_epochs=0,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(str(path))
    return module


# ---------------------------------------------------------------------------------------------
# Their server, and their model's forward on their dataset's pixels
# ---------------------------------------------------------------------------------------------
class Capture:
    """Wraps their ``model.model.inference`` to keep the whole action output of every call."""

    def __init__(self, inference_model):
        self.model = inference_model
        self.orig = inference_model.inference
        self.outputs = []
        inference_model.inference = self

    def __call__(self, *args, **kwargs):
        out = self.orig(*args, **kwargs)
        action = out["action"]
        logits = action[0] if isinstance(action, tuple) else action
        self.outputs.append(logits.detach().float().cpu().numpy()[0, -1].copy())
        return out


def load_server(vla: Path, ckpt: Path, cfg_path: Path):
    import torch

    os.environ.setdefault("VLA_API_KEY", "golden-fixture-local-only")
    spec = importlib.util.spec_from_file_location("team_inference_server", vla / SERVER_REL)
    server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server)
    half = torch.nn.Module.half
    torch.nn.Module.half = lambda self: self     # float32: see the module docstring
    try:
        inference = server.MobileVLAInference(checkpoint_path=str(ckpt),
                                              config_path=str(cfg_path), device="cpu")
    finally:
        torch.nn.Module.half = half
    dtypes = {str(p.dtype) for p in inference.model.parameters()}
    if dtypes != {"torch.float32"}:
        raise SystemExit(f"their model is not float32: {dtypes}")
    return inference


def run_server(inference, frames_png: list, instruction: str) -> dict:
    """Their predict() frame by frame after reset(): chunks, published actions, prompt ids."""
    cap = Capture(inference.model.model)
    try:
        inference.reset()
        published = []
        for data in frames_png:
            action, _ = inference.predict(base64.b64encode(data).decode("ascii"), instruction)
            published.append(np.asarray(action, dtype=np.float64))
    finally:
        inference.model.model.inference = cap.orig
    if len(cap.outputs) != len(frames_png):
        raise SystemExit(f"their server failed on {len(frames_png) - len(cap.outputs)} frames "
                         "(see its 'Inference failed' log lines)")
    ids, mask = inference._tokenize_instruction(instruction)
    return {"chunks": np.stack(cap.outputs), "published": np.stack(published),
            "ids": ids[0].numpy(), "mask": mask[0].numpy()}


def run_on_pixels(inference, pixels, instruction: str) -> np.ndarray:
    """Their model's per-frame inference call (as their server makes it) on given pixels."""
    import torch

    cap = Capture(inference.model.model)
    try:
        inference.reset()
        lang_x, attention_mask = inference._tokenize_instruction(instruction)
        with torch.no_grad():
            for t in range(pixels.shape[0]):
                inference.model.model.inference(vision_x=pixels[t][None, None].float(),
                                                lang_x=lang_x, attention_mask=attention_mask)
    finally:
        inference.model.model.inference = cap.orig
    return np.stack(cap.outputs)


def h5_dataset_pixels(git_dir: Path, commit: str, frames: np.ndarray, work: Path, cfg: dict):
    """Their MobileVLAH5Dataset of ``commit`` reads an episode of ``frames``; its 'rgb'."""
    import h5py

    folder = work / f"h5_{commit}"
    folder.mkdir()
    source = folder / "mobile_vla_h5_dataset.py"
    source.write_text(git(git_dir, "show", f"{commit}:{H5_REL}") + "\n")
    spec = importlib.util.spec_from_file_location(f"team_h5_dataset_{commit}", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = folder / "data"
    data.mkdir()
    with h5py.File(data / "episode_golden_left.h5", "w") as f:
        f["images"] = frames
        f["actions"] = np.zeros((len(frames), 3), dtype=np.float32)
        f["language_instruction"] = np.array([INSTRUCTIONS["short"].encode()])
    ds = module.MobileVLAH5Dataset(
        data_dir=str(data), episode_pattern="episode_*.h5", window_size=cfg["window_size"],
        action_chunk_size=cfg["fwd_pred_next_n"], fwd_pred_next_n=cfg["fwd_pred_next_n"],
        model_name="kosmos", image_size=cfg["image_size"], train_split=0.0, is_validation=True)
    sample = ds[0]
    return sample["rgb"][:len(frames)]


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    robovlms, vla, out = args.robovlms.resolve(), args.vla.resolve(), args.out.resolve()
    git_dir = (args.robovlms_git or robovlms / ".git").resolve()
    for path in (robovlms / "robovlms", vla / SERVER_REL, vla / CONFIG_REL):
        if not path.exists():
            raise SystemExit(f"missing {path}")
    commits = {"RoboVLMs": git(git_dir, "rev-parse", "HEAD")}
    h5_commits = {"team_h5_2026": git(git_dir, "rev-parse", H5_CHANGE),
                  "team_h5_2025": git(git_dir, "rev-parse", f"{H5_CHANGE}^")}
    sys.path[:0] = [str(vla), str(robovlms)]
    stubs = install_import_stubs()

    import lightning
    import torch
    import torchvision
    import transformers

    torch.use_deterministic_algorithms(True)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    kosmos = out / "kosmos2_tiny"
    kosmos.mkdir()
    kosmos_facts = make_kosmos_folder(kosmos)

    frames = make_frames()
    (out / "frames").mkdir()
    frames_png = []
    for i, frame in enumerate(frames):
        data = png_bytes(frame)
        (out / "frames" / f"frame_{i:02d}.png").write_bytes(data)
        frames_png.append(data)

    work = Path(tempfile.mkdtemp(prefix="team_golden_"))
    results: dict = {}
    config_files = {}
    pixels: dict = {}
    sensitivity: dict = {}
    class_map: dict = {}
    try:
        for head, seed in (("regression", 123), ("classification", 124)):
            run_cfg = team_config(vla / CONFIG_REL, str(kosmos), head)
            run_cfg_path = work / f"{head}.json"
            run_cfg_path.write_text(json.dumps(run_cfg, indent=4))
            name = "mobile_vla_left_chunk10_20251218" + ("" if head == "regression"
                                                         else "_classification")
            fixture_cfg = team_config(vla / CONFIG_REL, "kosmos2_tiny", head)
            (out / f"{name}.json").write_text(json.dumps(fixture_cfg, indent=4) + "\n")
            config_files[head] = f"{name}.json"
            ckpt = out / f"{name}.ckpt"
            save_with_lightning(run_cfg, ckpt, seed)
            inference = load_server(vla, ckpt, run_cfg_path)
            if head == "classification":    # the table their server maps classes with
                class_map = {str(k): [float(v) for v in row]
                             for k, row in sorted(inference.class_map.items(),
                                                  key=lambda kv: int(kv[0]))}
            for key, instruction in INSTRUCTIONS.items():
                res = run_server(inference, frames_png, instruction)
                results[f"{head}/team_server/{key}/chunks"] = res["chunks"]
                results[f"{head}/team_server/{key}/published"] = res["published"]
                results[f"ids/{key}"] = res["ids"]
                results[f"mask/{key}"] = res["mask"]
            # How much the fixture tells apart (meta.json "sensitivity"): the same run with
            # the LSTM state carried past the window (no overflow re-run), and with another
            # instruction of the same token count as "short" (their layout: identical).
            head_module = inference.model.model.act_head
            window = head_module.history_len
            head_module.history_len = 10 ** 6
            try:
                carried = run_server(inference, frames_png, INSTRUCTIONS["short"])["chunks"]
            finally:
                head_module.history_len = window
            other = run_server(inference, frames_png, SAME_LENGTH_INSTRUCTION)
            if int(other["mask"].sum()) != int(results["mask/short"].sum()):
                raise SystemExit(f"{SAME_LENGTH_INSTRUCTION!r} is not as long as the short one")
            golden = results[f"{head}/team_server/short/chunks"]
            sensitivity[head] = {
                "state_carried_instead_of_window_rerun": float(
                    np.abs(carried - golden)[window:].max()),
                "same_length_other_instruction": float(np.abs(other["chunks"] - golden).max()),
                "short_vs_long_instruction": float(np.abs(
                    results[f"{head}/team_server/long/chunks"] - golden).max()),
            }
            for pipeline, commit in h5_commits.items():
                if pipeline not in pixels:
                    pixels[pipeline] = h5_dataset_pixels(git_dir, commit, frames, work, run_cfg)
                for key, instruction in INSTRUCTIONS.items():
                    results[f"{head}/{pipeline}/{key}/chunks"] = run_on_pixels(
                        inference, pixels[pipeline], instruction)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for head in ("regression", "classification"):
        arrays = {k.split("/", 1)[1].replace("/", "__"): v for k, v in results.items()
                  if k.startswith(head + "/")}
        np.savez_compressed(out / f"expected_{head}.npz", **arrays)
    np.savez_compressed(out / "prompt_ids.npz",
                        **{k.replace("/", "__"): v for k, v in results.items()
                           if k.startswith(("ids/", "mask/"))})

    sources = vla / "SOURCES.txt"    # where the --vla files came from (written when copied)
    vla_sources = (sources.read_text().splitlines() if sources.exists()
                   else ["(no SOURCES.txt in --vla)"])
    meta = {
        "made_by": "scripts/make_team_golden.py",
        "command": " ".join([sys.executable, "scripts/make_team_golden.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()} {platform.system()} ({os.cpu_count()} CPUs), CPU only",
        "team_code": {
            "minuum/RoboVLMs": commits["RoboVLMs"],
            "minuum/vla": vla_sources,
            "h5_dataset_versions": {p: f"{c} ({H5_REL})" for p, c in h5_commits.items()},
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__,
                     "transformers": transformers.__version__,
                     "lightning": lightning.__version__, "numpy": np.__version__},
        "import_stubs": stubs,
        "deviations_from_their_code": [
            "float32: their server calls self.model.model.half(); here torch.nn.Module.half is "
            "a no-op while MobileVLAInference loads (their code otherwise unchanged)",
            f"act_head.hidden_size {HEAD_HIDDEN} (their config: 512) and the tiny Kosmos-2, "
            "to keep the fixture small",
            f"classification: act_head.type MobileVLAClassificationDecoder, num_classes "
            f"{NUM_CLASSES}, inference_mode classification (their server's default 9-class "
            "class_map)",
            "weights: Kosmos-2 drawn by spread_weights before the folder was saved (their "
            "trainer loads it from there); after MobileVLATrainer(config) their act_head is "
            "redrawn the same way and action_token ~ N(0, 0.1^2); default inits give near-"
            "constant "
            "outputs that would not tell pipelines or layouts apart",
            "paths in the training JSONs point at kosmos2_tiny/ (relative in the fixture, "
            "absolute while their code ran)",
        ],
        "kosmos2_tiny": kosmos_facts,
        "frames": {"count": N_FRAMES, "size": [WIDTH, HEIGHT], "files": "frames/frame_NN.png",
                   "colour": "RGB", "sent_to_server_as": "base64 PNG (their predict decodes "
                   "with PIL and converts to RGB)"},
        "instructions": INSTRUCTIONS,
        "prompt_tokens": {k: int(results[f"mask/{k}"].sum()) for k in INSTRUCTIONS},
        "latent_query_num": kosmos_facts["backbone"]["latent_query_num"],
        "window_size": 8, "fwd_pred_next_n": 10,
        "heads": config_files,
        "checkpoints": {h: c.replace(".json", ".ckpt") for h, c in config_files.items()},
        "server_class_map": {"what": "class -> [linear_x, linear_y] their server published for "
                                     "the classification head (its default: the JSON has no "
                                     "class_map)", "table": class_map},
        "pipelines": {
            "team_server": "their MobileVLAInference.predict on the PNG frames (bicubic "
                           "resize to 224 + CLIP mean/std)",
            "team_h5_2025": f"their MobileVLAH5Dataset at {h5_commits['team_h5_2025']} "
                            "(bilinear, /255, no mean/std) on an H5 episode of the frames, "
                            "then their model.inference per frame",
            "team_h5_2026": f"their MobileVLAH5Dataset at {h5_commits['team_h5_2026']} "
                            "(bilinear + CLIP mean/std), likewise",
        },
        "sensitivity": {
            "what": "max |difference| from the golden team_server short chunks when one thing "
                    "changes (their code); pipeline differences are between the golden files",
            **sensitivity,
            **{f"{head}: {a} vs {b}": float(np.abs(
                results[f"{head}/{a}/short/chunks"] - results[f"{head}/{b}/short/chunks"]).max())
               for head in ("regression", "classification")
               for a, b in (("team_server", "team_h5_2025"), ("team_server", "team_h5_2026"),
                            ("team_h5_2025", "team_h5_2026"))},
        },
        "expected": {
            "expected_<head>.npz": "<pipeline>__<short|long>__chunks: (frames, 10, 2) "
                                   "normalized tanh outputs (regression) or (frames, 10, 9) "
                                   "logits (classification), the whole chunk their model "
                                   "returned for each frame (reset before each sequence); "
                                   "team_server__<key>__published: (frames, 2) what their "
                                   "server returned (chunk[0] x 1.15 or the class velocity, "
                                   "zero on the first frame, clipped to +-1.5)",
            "prompt_ids.npz": "ids__<key>, mask__<key>: their tokenizer call's input_ids and "
                              "attention_mask (padded to max_text_len 256)",
        },
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
