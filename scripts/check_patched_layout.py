"""The ``robovlms_patched`` token layout against the team's code with Kosmos-2 patched.

Upstream RoboVLMs copies ``tools/modeling_kosmos2.py`` into the installed transformers
(``eval/calvin/model_wrapper.py`` line 54): its ``Kosmos2ForConditionalGeneration.forward``
(line 2148) skips the vision tower when ``pixel_values`` is None (lines 2227-2229) and runs the
text model on ``inputs_embeds``, so ``BaseRoboVLM.forward_continuous``'s first Kosmos-2 call
(``base_backbone.py`` line 1214) succeeds and the fallback branch never runs. This script makes
that one change to the team's environment (the forward above, nothing else), runs their
inference server class on the golden fixture (test/data/team_golden: their trainer's regression
checkpoint, frames, instructions), and compares the node's chunks with ``token_layout
robovlms_patched`` (and, as a control, ``robovlms_kosmos``).

Two steps, two environments (nothing of their code is committed; it is read from checkouts):

    TEAM_PY scripts/check_patched_layout.py team --robovlms RoboVLMs --vla vla --out /tmp/p.npz
    .venv/bin/python scripts/check_patched_layout.py node --team-npz /tmp/p.npz

``TEAM_PY``: a Python with their pins (transformers 4.41.2, lightning), as for
scripts/make_team_golden.py, whose helpers this script reuses.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "test" / "data" / "team_golden"
CKPT = "mobile_vla_left_chunk10_20251218.ckpt"
CONFIG = "mobile_vla_left_chunk10_20251218.json"
ATOL = 1e-4


def _golden():
    spec = importlib.util.spec_from_file_location("make_team_golden",
                                                  REPO / "scripts" / "make_team_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def patch_kosmos2(calls: dict) -> None:
    """Kosmos-2's forward as tools/modeling_kosmos2.py has it: no pixels, text model only."""
    import transformers.models.kosmos2.modeling_kosmos2 as mk

    stock = mk.Kosmos2ForConditionalGeneration.forward

    def forward(self, pixel_values=None, input_ids=None, image_embeds_position_mask=None,
                attention_mask=None, head_mask=None, past_key_values=None, image_embeds=None,
                inputs_embeds=None, position_ids=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        if pixel_values is None and image_embeds is None:
            calls["patched"] += 1
            return self.text_model(
                input_ids=input_ids, attention_mask=attention_mask, image_embeds=None,
                image_embeds_position_mask=image_embeds_position_mask, head_mask=head_mask,
                past_key_values=past_key_values, inputs_embeds=inputs_embeds,
                position_ids=position_ids, labels=labels, use_cache=use_cache,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                return_dict=True)
        calls["stock"] += 1
        return stock(self, pixel_values=pixel_values, input_ids=input_ids,
                     image_embeds_position_mask=image_embeds_position_mask,
                     attention_mask=attention_mask, head_mask=head_mask,
                     past_key_values=past_key_values, image_embeds=image_embeds,
                     inputs_embeds=inputs_embeds, position_ids=position_ids, labels=labels,
                     use_cache=use_cache, output_attentions=output_attentions,
                     output_hidden_states=output_hidden_states, return_dict=return_dict)

    mk.Kosmos2ForConditionalGeneration.forward = forward


def team(args) -> int:
    """Their server on the fixture with the patched Kosmos-2; chunks per frame to ``--out``."""
    golden = _golden()
    golden.install_import_stubs()
    sys.path[:0] = [str(args.vla), str(args.robovlms)]
    calls = {"patched": 0, "stock": 0}
    patch_kosmos2(calls)
    cfg = json.loads((FIXTURE / CONFIG).read_text())
    kosmos = str(FIXTURE / "kosmos2_tiny")

    def absolute(node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                absolute(value)
            elif isinstance(value, str) and value.startswith("kosmos2_tiny"):
                node[key] = str(FIXTURE / value)

    absolute(cfg)
    run_cfg = args.out.with_suffix(".json")
    run_cfg.write_text(json.dumps(cfg))
    inference = golden.load_server(args.vla, FIXTURE / CKPT, run_cfg)
    meta = json.loads((FIXTURE / "meta.json").read_text())
    frames = [p.read_bytes() for p in sorted((FIXTURE / "frames").glob("frame_*.png"))]
    out = {key: golden.run_server(inference, frames, text)["chunks"]
           for key, text in meta["instructions"].items()}
    np.savez(args.out, **out)
    print(f"their server, Kosmos-2 patched: {calls['patched']} patched calls, "
          f"{calls['stock']} stock calls (kosmos2 folder {kosmos}); wrote {args.out}")
    return 0 if calls["patched"] and not calls["stock"] else 1


def node(args) -> int:
    """The node's chunks in both team layouts against their patched run."""
    from PIL import Image

    from mobile_vla_node.backends.torch_backend import TorchBackend
    from mobile_vla_node.core.config import ActionConfig, BackendConfig
    from mobile_vla_node.core.runtime import PolicyRuntime

    meta = json.loads((FIXTURE / "meta.json").read_text())
    frames = [np.asarray(Image.open(p).convert("RGB"))
              for p in sorted((FIXTURE / "frames").glob("frame_*.png"))]
    theirs = dict(np.load(args.team_npz))
    worst = {}
    for layout in ("robovlms_patched", "robovlms_kosmos"):
        backend = TorchBackend(BackendConfig(
            model_preset="tiny", model_path=str(FIXTURE / CKPT),
            model_config=str(FIXTURE / CONFIG), backbone_path=str(FIXTURE / "kosmos2_tiny"),
            token_layout=layout,
            image_pipeline="team_server", warmup_iters=0))
        backend.load()
        for key, text in meta["instructions"].items():
            runtime = PolicyRuntime(backend, ActionConfig())
            runtime.set_command(text)
            got = np.stack([np.asarray(runtime.step(f, "rgb").actions, np.float64)
                            for f in frames])
            diff = float(np.abs(got - theirs[key]).max())
            worst[layout] = max(worst.get(layout, 0.0), diff)
            print(f"{layout:17s} {key:5s} ({len(runtime.text_ids)} ids, {len(frames)} frames): "
                  f"max |node - their patched code| = {diff:.3g}")
    ok = worst["robovlms_patched"] <= ATOL < worst["robovlms_kosmos"]
    print("PASS" if ok else "FAIL", f"(robovlms_patched within {ATOL:g}; robovlms_kosmos, the "
          "control, must differ)")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    t = sub.add_parser("team", help="their server with Kosmos-2 patched (their environment)")
    t.add_argument("--robovlms", required=True, type=Path, help="minuum/RoboVLMs checkout")
    t.add_argument("--vla", required=True, type=Path, help="folder with minuum/vla files")
    t.add_argument("--out", required=True, type=Path, help="chunks .npz to write")
    n = sub.add_parser("node", help="the node against the team step's chunks (.venv)")
    n.add_argument("--team-npz", required=True, type=Path)
    args = parser.parse_args(argv)
    return team(args) if args.step == "team" else node(args)


if __name__ == "__main__":
    sys.exit(main())
