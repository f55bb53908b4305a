"""Checkpoint formats, key mapping, strictness, safe unpickling and model-folder resolution."""

from __future__ import annotations

import fractions
import logging

import pytest
import torch

from mobile_vla_node.model.checkpoint import (
    CheckpointError,
    load_into,
    read_state_dict,
    save_safetensors,
)
from mobile_vla_node.model.loader import ModelSource, load_policy
from mobile_vla_node.model.policy import MobileVLAPolicy
from mobile_vla_node.model.presets import preset_config
from mobile_vla_node.model.tokenizer import PromptTokenizer, builtin_tokenizer

LM_HEAD = "backbone.text_model.lm_head.weight"


@pytest.fixture(scope="module")
def source():
    """A tiny policy whose every tensor differs from the seeded random (and demo) weights."""
    config = preset_config("tiny")
    tok = PromptTokenizer(builtin_tokenizer(), config.prompt_template)
    model = MobileVLAPolicy(config, tok.prefix_ids, tok.image_end_id, tok.special_ids["<pad>"])
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for t in model.state_dict().values():
            t.add_(torch.randn(t.shape, generator=gen) * 0.05 + 0.01)
    return model.eval()


@pytest.fixture(scope="module")
def state(source):
    return {k: v.detach().clone() for k, v in source.state_dict().items()}


def assert_bit_exact(model, state):
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key


def write(folder, name, payload, config=None, config_name=None):
    """Save ``payload`` as ``folder/name`` with the policy config beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save(payload, str(path))
    (config or preset_config("tiny")).save(folder / (config_name or "config.json"))
    return path


def test_lightning_ckpt(tmp_path, state):
    path = write(tmp_path, "last.ckpt", {"state_dict": {"model." + k: v for k, v in state.items()},
                                          "epoch": 3, "global_step": 1200},
                 config_name="last.json")
    lp = load_policy(ModelSource(preset="tiny", model_path=str(path)))
    assert_bit_exact(lp.model, state)
    assert f"{len(state)} tensors from {path}" in lp.weights
    assert not lp.model.training


def test_pth_model_state_dict(tmp_path, state):
    path = write(tmp_path, "policy.pth", {"model_state_dict": dict(state), "optimizer": {}})
    assert_bit_exact(load_policy(ModelSource(preset="tiny", model_path=str(path))).model, state)


def test_pth_state_dict_with_module_prefix(tmp_path, state):
    path = write(tmp_path, "policy.pth", {"state_dict": {"module." + k: v
                                                         for k, v in state.items()}})
    assert_bit_exact(load_policy(ModelSource(preset="tiny", model_path=str(path))).model, state)


def test_safetensors(tmp_path, source, state):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "policy.safetensors"
    save_safetensors(source, path)
    preset_config("tiny").save(tmp_path / "policy.json")
    assert_bit_exact(load_policy(ModelSource(preset="tiny", model_path=str(path))).model, state)


def test_config_beside_the_checkpoint_is_used(tmp_path, state):
    cfg = preset_config("tiny", window_size=3, max_linear=0.3)
    path = write(tmp_path, "policy.pth", dict(state), config=cfg, config_name="policy.json")
    lp = load_policy(ModelSource(preset="small", model_path=str(path)))
    assert lp.config == cfg
    assert lp.model.config.window_size == 3
    assert_bit_exact(lp.model, state)


def test_model_folder_with_config_and_tokenizer(tmp_path, state):
    path = write(tmp_path, "policy.pth", dict(state))
    tok = builtin_tokenizer()
    tok.add_tokens(["zebra"])
    tok.save(str(tmp_path / "tokenizer.json"))
    lp = load_policy(ModelSource(preset="tiny", model_path=str(tmp_path)))
    assert_bit_exact(lp.model, state)
    assert str(path) in lp.weights
    assert tok.token_to_id("zebra") in lp.tokenizer.encode("go to the zebra").tolist()


def test_model_folder_with_two_checkpoints_errors(tmp_path, state):
    write(tmp_path, "a.pth", dict(state))
    write(tmp_path, "b.ckpt", {"state_dict": dict(state)})
    with pytest.raises(CheckpointError, match=r"several checkpoints \['a.pth', 'b.ckpt'\]"):
        load_policy(ModelSource(preset="tiny", model_path=str(tmp_path)))


def test_lm_head_of_kosmos2_for_conditional_generation_is_ignored(tmp_path, state, caplog):
    vocab, dim = state["backbone.text_model.model.embed_tokens.weight"].shape
    with_head = {**state, LM_HEAD: torch.randn(vocab, dim)}
    path = write(tmp_path, "policy.ckpt", {"state_dict": {"model." + k: v
                                                          for k, v in with_head.items()}})
    caplog.set_level(logging.INFO, logger="mobile_vla_node.model.loader")
    lp = load_policy(ModelSource(preset="tiny", model_path=str(path)))
    assert_bit_exact(lp.model, state)
    assert "ignored 1 checkpoint keys (e.g. backbone.text_model.lm_head.weight)" in caplog.text
    report = load_into(lp.model, with_head)
    assert report.ignored == [LM_HEAD]
    assert report.loaded == len(state)
    assert report.missing == [] and report.unexpected == []


def test_backbone_folder_plus_head_checkpoint(tmp_path, state):
    """A Hugging Face Kosmos2ForConditionalGeneration folder as backbone_path, with a strict
    head-only checkpoint on top: the folder's keys (lm_head aside) are exactly our backbone's."""
    from safetensors.torch import save_file
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

    cfg = preset_config("tiny")
    torch.manual_seed(77)
    hf = Kosmos2ForConditionalGeneration(Kosmos2Config(**cfg.backbone))
    hf_state = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    assert "text_model.lm_head.weight" in hf_state
    backbone_dir = tmp_path / "kosmos2"
    backbone_dir.mkdir()
    save_file(hf_state, str(backbone_dir / "model.safetensors"))
    builtin_tokenizer().save(str(backbone_dir / "tokenizer.json"))
    head = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    path = write(tmp_path / "head", "head.pth", head)
    lp = load_policy(ModelSource(preset="tiny", model_path=str(path),
                                 backbone_path=str(backbone_dir)))
    ours = lp.model.state_dict()
    backbone_keys = {k for k in ours if k.startswith("backbone.")}
    assert backbone_keys == {"backbone." + k for k in hf_state} - {LM_HEAD}
    for key in backbone_keys:
        assert torch.equal(ours[key], hf_state[key[len("backbone."):]]), key
    for key, value in head.items():
        assert torch.equal(ours[key], value), key
    assert f"backbone from {backbone_dir}" in lp.weights
    assert f"{len(head)} tensors from {path}" in lp.weights


def test_strict_loading_lists_missing_and_unexpected_keys(tmp_path, state):
    broken = dict(state)
    del broken["act_head.actions.mlp.0.bias"]
    broken["act_head.extra_layer.weight"] = torch.zeros(3)
    path = write(tmp_path, "policy.pth", broken)
    with pytest.raises(CheckpointError) as err:
        load_policy(ModelSource(preset="tiny", model_path=str(path)))
    text = str(err.value)
    assert "1 missing, 1 unexpected" in text
    assert "missing: act_head.actions.mlp.0.bias" in text
    assert "unexpected: act_head.extra_layer.weight" in text
    assert "strict: false" in text


def test_non_strict_loading_loads_the_rest(tmp_path, state, caplog):
    """strict: false tolerates a missing backbone tensor (never a head tensor: see
    test_team_checkpoints.py::test_missing_head_tensor_is_fatal_even_non_strict)."""
    gone = "backbone.text_model.model.layer_norm.bias"
    broken = dict(state)
    del broken[gone]
    broken["act_head.extra_layer.weight"] = torch.zeros(3)
    path = write(tmp_path, "policy.pth", broken)
    with caplog.at_level(logging.WARNING):
        lp = load_policy(ModelSource(preset="tiny", model_path=str(path), strict=False))
    loaded = lp.model.state_dict()
    for key, value in state.items():
        if key != gone:
            assert torch.equal(loaded[key], value), key
    assert not torch.equal(loaded[gone], state[gone])
    assert "non-strict load: 1 missing, 1 unexpected keys" in caplog.text


def test_many_missing_keys_are_shortened(tmp_path, state):
    path = write(tmp_path, "policy.pth", {k: v for k, v in state.items()
                                          if not k.startswith("backbone.")})
    with pytest.raises(CheckpointError, match=r"\(\+\d+ more\)"):
        load_policy(ModelSource(preset="tiny", model_path=str(path)))


def test_pickled_objects_are_refused_without_allow_unsafe_pickle(tmp_path, state, caplog):
    # argparse.Namespace is allow-listed (test_team_checkpoints.py); any other global is not.
    payload = {"state_dict": {"model." + k: v for k, v in state.items()},
               "hyper_parameters": {"lr": fractions.Fraction(1, 10000)}}
    path = write(tmp_path, "policy.ckpt", payload)
    with pytest.raises(CheckpointError) as err:
        load_policy(ModelSource(preset="tiny", model_path=str(path)))
    assert "allow_unsafe_pickle" in str(err.value)
    assert "weights_only" in str(err.value)
    caplog.set_level(logging.WARNING)
    lp = load_policy(ModelSource(preset="tiny", model_path=str(path), allow_unsafe_pickle=True))
    assert_bit_exact(lp.model, state)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "allow_unsafe_pickle" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()


def test_shape_mismatch_is_named(tmp_path, state):
    bad = dict(state)
    key = "act_head.actions.mlp.2.weight"        # (chunk * action_dim, hidden): not square
    bad[key] = state[key].t().contiguous()
    path = write(tmp_path, "policy.pth", bad)
    rows, cols = state[key].shape
    assert rows != cols
    with pytest.raises(CheckpointError) as err:
        load_policy(ModelSource(preset="tiny", model_path=str(path)))
    assert "shapes do not match" in str(err.value)
    assert f"{key}: checkpoint ({cols}, {rows}) vs model ({rows}, {cols})" in str(err.value)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(ModelSource(preset="tiny", model_path=str(tmp_path / "nope.ckpt")))
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")


def test_wrong_suffix_points_at_the_right_backend(tmp_path):
    onnx = tmp_path / "policy.onnx"
    onnx.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="backend: onnx"):
        load_policy(ModelSource(preset="tiny", model_path=str(onnx)))
    with pytest.raises(CheckpointError, match="unknown suffix '.onnx'"):
        read_state_dict(onnx)


def test_container_without_tensors(tmp_path):
    path = tmp_path / "junk.pth"
    torch.save({"epoch": 3, "notes": "hello"}, str(path))
    with pytest.raises(CheckpointError, match=r"no state dict found \(top-level: \['epoch', "
                                              r"'notes'\]\)"):
        read_state_dict(path)
