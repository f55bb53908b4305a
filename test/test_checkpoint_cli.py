"""`vla_checkpoint inspect`: report, verdict, exit status and a params snippet that runs."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import yaml
from team_fixtures import (
    build,
    make_lora,
    peft_state,
    save_lightning,
    save_pth,
    tiny_config,
    to_team_keys,
    tokenizer_dir,
    training_json,
    write_json,
    write_team_checkpoint,
)

from mobile_vla_node.export import checkpoint_cli


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = checkpoint_cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    folder = tmp_path_factory.mktemp("team")
    model, ckpt, cfg = write_team_checkpoint(folder)
    return folder, model, ckpt, cfg


def test_inspect_their_layout_reports_everything_and_the_snippet_runs(team):
    folder, model, ckpt, cfg = team
    rc, out, err = run("inspect", ckpt, "--config", cfg, "--image-pipeline", "team_h5_2025",
                       "--tokenizer-path", tokenizer_dir())
    assert rc == 0, out + err
    for text in ("Lightning .ckpt ('state_dict', keys prefixed 'model.')", "epoch=9",
                 "act_head.velocities.mlp", "MobileVLALSTMDecoder (regression)",
                 "window       : 4", "chunk        : 3", "action dim   : 2",
                 "image        : none", "resize bilinear", "action scale : x1.15",
                 "act_head.velocities.* -> act_head.actions.* (4 tensors)",
                 "missing      : none", "unexpected   : none", "verdict      : OK",
                 "token layout : robovlms_kosmos (the team's trainer", "max_text_len 256",
                 "instructions : INSTRUCTION-BLIND: the prompt is overwritten by image tokens; "
                 "commands do not change the actions", "prompt of up to 17 ids"):
        assert text in out, (text, out)
    snippet = yaml.safe_load(out[out.index("/**:"):])
    params = snippet["/**"]["ros__parameters"]
    assert params["model_config"] == str(cfg.resolve())
    assert params["model_path"] == str(ckpt.resolve())
    assert params["image_pipeline"] == "team_h5_2025"
    assert params["token_layout"] == "robovlms_kosmos"
    assert params["tokenizer_path"] == str(tokenizer_dir().resolve())
    from mobile_vla_node.backends.torch_backend import TorchBackend
    from mobile_vla_node.core.config import NodeConfig

    backend = TorchBackend(NodeConfig.from_params(params).backend)
    backend.load()
    state = backend.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    assert backend.spec.resize_filter == "bilinear" and backend.spec.max_linear == 1.15


def test_inspect_refuses_their_checkpoint_without_a_kosmos_tokenizer(team):
    folder, model, ckpt, cfg = team
    rc, out, _ = run("inspect", ckpt, "--config", cfg, "--image-pipeline", "team_h5_2025")
    assert rc == 1 and "CANNOT RUN FAITHFULLY" in out
    assert "set tokenizer_path" in out and "or backbone_path" in out
    empty = folder / "no_tokenizer"
    empty.mkdir(exist_ok=True)
    rc, out, _ = run("inspect", ckpt, "--config", cfg, "--image-pipeline", "team_h5_2025",
                     "--tokenizer-path", empty)
    assert rc == 1 and "holds no tokenizer" in out


def test_probe_measures_what_the_instruction_changes(team):
    """The fixture in their layout: left/right (same token count) change nothing, exactly."""
    folder, model, ckpt, cfg = team
    args = ("inspect", ckpt, "--config", cfg, "--image-pipeline", "team_h5_2025",
            "--tokenizer-path", tokenizer_dir(), "--probe")
    rc, out, _ = run(*args)
    assert rc == 0, out
    probe = next(line for line in out.splitlines() if line.startswith("probe        :"))
    assert "(16 ids) vs" in probe and "on 8 frames" in probe
    assert "max |action difference| 0 (normalized) = 0 m/s" in probe
    assert "the instruction does not change the actions" in probe
    # a prompt longer than the 16 image tokens keeps its tail: the probe sees a difference
    rc, out, _ = run(*args, "--instructions", "go to the left",
                     "Navigate to the gray basket on the right and then turn left")
    probe = next(line for line in out.splitlines() if line.startswith("probe        :"))
    assert "partly seen" in out and "does not change" not in probe
    assert float(probe.split("difference| ")[1].split(" ")[0]) > 1e-4
    # the same checkpoint read in the patched layout sees left vs right
    rc, out, _ = run(*args, "--token-layout", "robovlms_patched")
    probe = next(line for line in out.splitlines() if line.startswith("probe        :"))
    assert "every prompt id reaches the action token" in out and "does not change" not in probe
    assert float(probe.split("difference| ")[1].split(" ")[0]) > 1e-4


def test_inspect_without_the_training_config_is_not_faithful(team):
    folder, model, ckpt, cfg = team
    rc, out, _ = run("inspect", ckpt)
    assert rc == 1
    assert "CANNOT RUN FAITHFULLY" in out and "no training config" in out


def test_inspect_refuses_an_unknown_architecture(tmp_path):
    state = {"clip_model.proj": torch.zeros(4, 4), "lstm.weight_ih_l0": torch.zeros(16, 4),
             "action_head.weight": torch.zeros(2, 4)}
    path = save_pth(tmp_path / "best_simple_lstm_model.pth", state)
    rc, out, _ = run("inspect", path)
    assert rc == 1
    assert "args: argparse.Namespace" in out and "val_mae=0.212" in out
    assert "unknown architecture" in out and "not public" in out
    assert "head         : not recognised" in out


def test_inspect_lora_needs_the_backbone(tmp_path):
    from safetensors.torch import save_file

    model = build(tiny_config())
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = save_lightning(tmp_path / "lora.ckpt",
                          to_team_keys(peft_state(base, make_lora(base), with_base=False)))
    data = training_json()
    data["train_setup"].update(lora_enable=True, lora_r=4, lora_alpha=16)
    cfg = write_json(tmp_path / "lora.json", data)
    rc, out, _ = run("inspect", path, "--config", cfg, "--preset", "tiny")
    assert rc == 1 and "set backbone_path" in out
    kosmos = tmp_path / "kosmos2"
    kosmos.mkdir()
    save_file({k[len("backbone."):]: v.contiguous() for k, v in base.items()
               if k.startswith("backbone.")}, str(kosmos / "model.safetensors"))
    rc, out, _ = run("inspect", path, "--config", cfg, "--preset", "tiny",
                     "--backbone-path", kosmos, "--tokenizer-path", tokenizer_dir(),
                     "--image-pipeline", "team_h5_2025")
    assert rc == 0, out
    assert "3 adapter pairs, rank 4, scale 4.0 (alpha/r)" in out
    assert f'backbone_path: "{kosmos.resolve()}"' in out


def test_inspect_classification_lists_the_class_table(tmp_path):
    config = tiny_config(head="classification", num_classes=6)
    state = to_team_keys(build(config).state_dict(), "logits")
    state["act_head.class_weights_tensor"] = torch.ones(6)
    path = save_lightning(tmp_path / "cls.ckpt", state)
    cfg = write_json(tmp_path / "cls.json",
                     training_json("MobileVLAClassificationDecoder", action_dim=6))
    rc, out, _ = run("inspect", path, "--config", cfg, "--tokenizer-path", tokenizer_dir(),
                     "--image-pipeline", "team_h5_2025")
    assert rc == 0, out
    assert "MobileVLAClassificationDecoder (classification)" in out
    assert "classes      : 6" in out and "class 1    -> vx 1.15 vy 0 wz 0" in out
    assert "dropped      : 1: act_head.class_weights_tensor" in out


def test_inspect_usage_errors(tmp_path):
    rc, _, err = run("inspect", tmp_path / "nope.ckpt")
    assert rc == 2 and "does not exist" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    model = build(tiny_config())
    ckpt = save_lightning(tmp_path / "m.ckpt", to_team_keys(model.state_dict()))
    rc, _, err = run("inspect", ckpt, "--config", bad)
    assert rc == 2 and "not valid JSON" in err
