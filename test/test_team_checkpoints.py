"""The team's checkpoints: head layouts, containers, LoRA, config-driven preprocessing and scale.

Fixtures are generated from the documented key layouts (team_fixtures.py) with tiny dims.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from team_fixtures import (
    CHUNK,
    LORA_TARGETS,
    LoadedBackend,
    build,
    make_lora,
    peft_state,
    prompt_tokenizer,
    save_lightning,
    save_pth,
    team_source,
    tiny_config,
    to_team_keys,
    tokenizer_dir,
    training_json,
    write_json,
)

from mobile_vla_node.backends.base import ModelSpec
from mobile_vla_node.core.chunks import ChunkPlayer
from mobile_vla_node.core.config import ActionConfig
from mobile_vla_node.core.postprocess import ActionPostprocessor
from mobile_vla_node.core.runtime import PolicyRuntime
from mobile_vla_node.model.checkpoint import CheckpointError, read_checkpoint
from mobile_vla_node.model.loader import ModelSource, load_policy, prepare
from mobile_vla_node.model.tokenizer import builtin_tokenizer
from mobile_vla_node.model.training_config import default_class_velocities

RNG = np.random.default_rng(3)
WINDOW_IMAGES = torch.from_numpy(RNG.integers(0, 256, (1, 4, 224, 224, 3), dtype=np.uint8))


def ids(model):
    return torch.from_numpy(prompt_tokenizer(model.config).encode("go to the red box"))[None]


def actions(model):
    with torch.no_grad():
        return model(WINDOW_IMAGES, ids(model))


@pytest.fixture(scope="module")
def reference():
    return build(tiny_config())


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cfg")
    return write_json(folder / "mobile_vla_left_chunk10_20251218.json", training_json())


def test_velocities_naming_gives_the_same_actions_as_actions_naming(tmp_path, reference,
                                                                    config_file):
    state = reference.state_dict()
    theirs = save_lightning(tmp_path / "last.ckpt", to_team_keys(state, "velocities"))
    (tmp_path / "ours").mkdir()
    ours = save_lightning(tmp_path / "ours" / "ours.ckpt", to_team_keys(state, "actions"))
    tiny_config().save(tmp_path / "ours" / "config.json")    # this package's native config
    raw, container = read_checkpoint(theirs)
    assert container.kind == "lightning" and container.extras["epoch"] == 9
    assert any(k.startswith("model.act_head.velocities.mlp.") for k in raw)
    a = load_policy(team_source(str(theirs), model_config=str(config_file)))
    b = load_policy(ModelSource("tiny", str(ours), tokenizer_path=str(tokenizer_dir())))
    assert "MobileVLALSTMDecoder layout" in a.weights
    # their checkpoint: their trainer's layout; ours: the layout its config.json records
    assert a.config.token_layout == b.config.token_layout == "robovlms_kosmos"
    expected = actions(reference)
    assert expected.shape == (1, CHUNK, 2)
    assert torch.equal(actions(a.model), expected)
    assert torch.equal(actions(b.model), expected)
    # the config drove everything the checkpoint cannot say
    cfg = a.config
    assert (cfg.window_size, cfg.fwd_pred_next_n, cfg.action_dim, cfg.head_type) == \
        (4, CHUNK, 2, "MobileVLALSTMDecoder")
    assert (cfg.image_norm, cfg.image_mean, cfg.image_std, cfg.resize_filter) == \
        ("none", [0.0] * 3, [1.0] * 3, "bilinear")
    assert cfg.max_linear == 1.15
    assert cfg.mlp_hidden == [64]   # not in their config: read from the tensor shapes


def test_image_normalization_follows_the_config(reference):
    x = WINDOW_IMAGES[0, :1]
    none = reference.normalize_image(x)
    assert torch.allclose(none, x.permute(0, 3, 1, 2).float() / 255.0)
    clip = build(tiny_config(image_norm="clip", image_mean=[0.48145466, 0.4578275, 0.40821073],
                             image_std=[0.26862954, 0.26130258, 0.27577711]))
    assert not torch.allclose(clip.normalize_image(x), none)
    with pytest.raises(ValueError, match="use 'custom'"):
        tiny_config(image_norm="imagenet")   # mean/std left at 'none' values


@pytest.mark.parametrize("dataset, norm, filt, scale", [
    ("MobileVLAH5Dataset", "none", "bilinear", 1.15),
    ("MobileVLADataset", "imagenet", "bilinear", 2.0),
])
def test_dataset_decides_normalization_and_action_scale(tmp_path, dataset, norm, filt, scale):
    data = training_json(train_dataset={"type": dataset})
    data.pop("norm_action")
    path = write_json(tmp_path / "c.json", data)
    prep = prepare(team_source(model_config=str(path)))
    assert (prep.config.image_norm, prep.config.resize_filter, prep.config.max_linear) == \
        (norm, filt, scale)
    # the JSON cannot tell the team's image pipelines apart: auto's pick is an assumption
    assert [a for a in prep.assumed if "cannot tell" in a] == prep.assumed
    assert len(prep.assumed) == 1
    assert not prep.problems
    # an explicit key wins; an unknown dataset is reported as an assumption
    explicit = write_json(tmp_path / "e.json", {**data, "image_norm": "clip",
                                                "action_scale": 0.8})
    prep = prepare(team_source(model_config=str(explicit)))
    assert (prep.config.image_norm, prep.config.max_linear) == ("clip", 0.8)
    unknown = write_json(tmp_path / "u.json", {**data, "train_dataset": {"type": "Other"}})
    prep = prepare(team_source(model_config=str(unknown)))
    assert any("image normalization" in a for a in prep.assumed)
    assert any("action scale" in a for a in prep.assumed)


def test_action_scale_reaches_the_twist():
    spec = ModelSpec("tiny", 224, 64, 4, 1, 2, 2.0, 0.1)
    post = ActionPostprocessor.for_spec(ActionConfig(), spec)
    np.testing.assert_allclose(post(np.array([[0.5, -0.25]])), [[1.0, -0.5, 0.0]])


def test_pth_with_argparse_args_loads_with_the_safe_default(tmp_path, reference, config_file):
    path = save_pth(tmp_path / "best_model.pth", to_team_keys(reference.state_dict()))
    raw, container = read_checkpoint(path)          # weights_only=True, Namespace allow-listed
    assert container.kind == "pth" and container.args["batch_size"] == 2
    assert container.extras["val_mae"] == pytest.approx(0.212)
    lp = load_policy(team_source(str(path), model_config=str(config_file)))
    assert torch.equal(actions(lp.model), actions(reference))


def test_safetensors_in_their_layout(tmp_path, reference, config_file):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in to_team_keys(reference.state_dict()).items()}
    save_file(state, str(tmp_path / "policy.safetensors"))
    lp = load_policy(team_source(str(tmp_path / "policy.safetensors"),
                                 model_config=str(config_file)))
    assert torch.equal(actions(lp.model), actions(reference))


# -- LoRA ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_case(tmp_path_factory, reference):
    folder = tmp_path_factory.mktemp("lora")
    base = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    adapters = make_lora(base, rank=4)
    data = training_json()
    data["train_setup"].update(lora_enable=True, lora_r=4, lora_alpha=8)
    cfg = write_json(folder / "mobile_vla_lora.json", data)
    merged = dict(base)
    for module, (a, b) in adapters.items():
        merged["backbone." + module + ".weight"] = base["backbone." + module + ".weight"] + \
            (8 / 4) * (b @ a)
    expected = build(tiny_config())
    expected.load_state_dict(merged)
    return folder, base, adapters, cfg, expected


def test_lora_checkpoint_equals_the_merged_model(lora_case):
    folder, base, adapters, cfg, expected = lora_case
    path = save_lightning(folder / "lora.ckpt", to_team_keys(peft_state(base, adapters)))
    lp = load_policy(team_source(str(path), model_config=str(cfg)))
    assert "3 LoRA adapters merged" in lp.weights
    ours = lp.model.state_dict()
    for key, value in expected.state_dict().items():
        assert torch.allclose(ours[key], value, atol=1e-6), key
    assert torch.allclose(actions(lp.model), actions(expected), atol=1e-5)
    # the adapters changed the weights
    assert not torch.allclose(ours[f"backbone.{LORA_TARGETS[0]}.weight"],
                              base[f"backbone.{LORA_TARGETS[0]}.weight"])


def test_lora_adapters_only_merge_onto_backbone_path(lora_case, tmp_path):
    from safetensors.torch import save_file

    folder, base, adapters, cfg, expected = lora_case
    kosmos = tmp_path / "kosmos-2-patch14-224"
    kosmos.mkdir()
    hf = {k[len("backbone."):]: v.contiguous() for k, v in base.items()
          if k.startswith("backbone.")}
    save_file(hf, str(kosmos / "model.safetensors"))
    builtin_tokenizer().save(str(kosmos / "tokenizer.json"))
    path = save_lightning(tmp_path / "adapters.ckpt",
                          to_team_keys(peft_state(base, adapters, with_base=False)))
    with pytest.raises(CheckpointError, match="set backbone_path") as err:
        load_policy(team_source(str(path), model_config=str(cfg)))
    assert "3 LoRA adapter pairs have no base weight" in str(err.value)
    lp = load_policy(team_source(str(path), backbone_path=str(kosmos),
                                 model_config=str(cfg)))
    assert torch.allclose(actions(lp.model), actions(expected), atol=1e-5)


def test_lora_without_alpha_is_refused(lora_case, tmp_path):
    folder, base, adapters, cfg, expected = lora_case
    path = save_lightning(tmp_path / "lora.ckpt", to_team_keys(peft_state(base, adapters)))
    with pytest.raises(CheckpointError, match="lora_alpha is unknown"):
        load_policy(team_source(str(path)))


# -- classification -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cls")
    config = tiny_config(head="classification", head_type="MobileVLAClassificationDecoder",
                         num_classes=6)
    model = build(config)
    state = to_team_keys(model.state_dict(), "logits")
    state["act_head.class_weights_tensor"] = torch.tensor([1.0, 0.5, 2.0, 2.0, 1.0, 1.0])
    path = save_lightning(folder / "cls.ckpt", state)
    cfg = write_json(folder / "basket_left_classification.json",
                     training_json("MobileVLAClassificationDecoder", action_dim=6,
                                   classification_speed=1.0))
    return path, cfg


def _force_classes(model, classes):
    """Zero the logits layer and bias each chunk step towards one class."""
    n = model.config.num_classes
    with torch.no_grad():
        model.act_head.logits.weight.zero_()
        bias = torch.zeros(len(classes), n)
        for step, c in enumerate(classes):
            bias[step, c] = 5.0
        model.act_head.logits.bias.copy_(bias.view(-1))


def test_classification_publishes_the_configured_velocity_per_class(classifier):
    path, cfg = classifier
    lp = load_policy(team_source(str(path), model_config=str(cfg)))
    assert (lp.config.head, lp.config.num_classes) == ("classification", 6)
    table = default_class_velocities(6, 1.0)
    assert lp.config.class_velocities == table
    backend = LoadedBackend(lp)
    runtime = PolicyRuntime(backend, ActionConfig())
    runtime.set_command("go to the red box")
    frame = RNG.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for c in range(6):
        _force_classes(lp.model, [c] * CHUNK)
        result = runtime.step(frame)
        assert result.actions.shape == (CHUNK, 6)
        np.testing.assert_allclose(result.velocities, [table[c]] * CHUNK, atol=1e-12)
    # the class_velocities parameter overrides the config's table
    custom = ";".join(f"{0.1 * c},{-0.1 * c},{0.01 * c}" for c in range(6))
    runtime = PolicyRuntime(backend, ActionConfig(class_velocities=custom, action_gain=2.0))
    runtime.set_command("go to the red box")
    _force_classes(lp.model, [4] * CHUNK)
    np.testing.assert_allclose(runtime.step(frame).velocities[0], [0.8, -0.8, 0.08])


def test_classification_chunk_plays_back_class_by_class(classifier):
    path, cfg = classifier
    lp = load_policy(team_source(str(path), model_config=str(cfg)))
    runtime = PolicyRuntime(LoadedBackend(lp), ActionConfig())
    runtime.set_command("turn left")
    _force_classes(lp.model, [1, 2, 0])
    result = runtime.step(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    player = ChunkPlayer(0.1)
    player.push(result.velocities, now=10.0)
    table = lp.config.class_velocities
    for step, c in enumerate([1, 2, 0]):
        np.testing.assert_allclose(player.current(10.0 + 0.1 * step + 0.01)[0], table[c])


def test_classification_nonfinite_logits_become_nan():
    spec = ModelSpec("t", 224, 8, 2, 2, 2, 1.0, 0.1, "classification", 6,
                     default_class_velocities(6))
    post = ActionPostprocessor.for_spec(ActionConfig(), spec)
    logits = np.zeros((2, 6))
    logits[0, 1] = 3.0
    logits[1, 2] = np.nan
    out = post(logits)
    np.testing.assert_allclose(out[0], [1.15, 0.0, 0.0])
    assert np.isnan(out[1]).all()


# -- upstream LSTMDecoder, refusals, strictness --------------------------------------------------

def test_upstream_lstm_decoder_drops_the_gripper(tmp_path):
    model = build(tiny_config())          # 2 velocities per step = action_dim 3 - gripper
    state = to_team_keys(model.state_dict(), "actions")
    state["act_head.gripper.mlp.0.weight"] = torch.zeros(8, 64)
    state["act_head.gripper.mlp.0.bias"] = torch.zeros(8)
    path = save_lightning(tmp_path / "up.ckpt", state)
    cfg = write_json(tmp_path / "up.json", training_json("LSTMDecoder", action_dim=3))
    lp = load_policy(team_source(str(path), model_config=str(cfg)))
    assert lp.config.action_dim == 2
    assert torch.equal(actions(lp.model), actions(model))
    prep = prepare(team_source(str(path), model_config=str(cfg)))
    assert "act_head.gripper.mlp.0.weight" in prep.ignored
    bad = write_json(tmp_path / "bad.json", training_json("LSTMDecoder", action_dim=2))
    with pytest.raises(CheckpointError, match="predicts 1 tanh value"):
        load_policy(team_source(str(path), model_config=str(bad)))


def test_unknown_architecture_is_refused(tmp_path):
    """best_simple_clip_lstm_model.pth-like: no act_head, custom top-level modules."""
    state = {"clip_model.visual.proj": torch.zeros(4, 4),
             "kosmos_model.text_model.embed.weight": torch.zeros(4, 4),
             "vision_encoder.weight": torch.zeros(4, 4), "lstm.weight_ih_l0": torch.zeros(16, 4),
             "action_head.0.weight": torch.zeros(2, 4)}
    path = save_pth(tmp_path / "best_simple_clip_lstm_model.pth", state)
    with pytest.raises(CheckpointError) as err:
        load_policy(team_source(str(path), strict=False))
    text = str(err.value)
    assert "unknown architecture" in text and "not public" in text
    assert "'lstm'" in text and "'clip_model'" in text and "nothing was loaded" in text


def test_hybrid_head_and_instruction_conditioning_are_refused(tmp_path, reference):
    state = to_team_keys(reference.state_dict())
    hybrid = {**state, "act_head.direction_head.0.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match="HybridActionHead"):
        load_policy(team_source(str(save_lightning(tmp_path / "h.ckpt", hybrid))))
    config = tiny_config(head="classification", num_classes=6)
    cls = to_team_keys(build(config).state_dict(), "logits")
    cls["act_head.instr_proj.weight"] = torch.zeros(64, 64)
    with pytest.raises(CheckpointError, match="instruction"):
        load_policy(team_source(str(save_lightning(tmp_path / "i.ckpt", cls))))


def test_config_and_keys_must_agree_on_the_head(tmp_path, reference, classifier):
    path = save_lightning(tmp_path / "v.ckpt", to_team_keys(reference.state_dict()))
    _, cls_cfg = classifier
    with pytest.raises(CheckpointError, match="wrong model_config"):
        load_policy(team_source(str(path), model_config=str(cls_cfg)))
    wrong_chunk = write_json(tmp_path / "w.json", training_json(fwd_pred_next_n=5))
    with pytest.raises(CheckpointError, match="fwd_pred_next_n 5 x action_dim 2 = 10"):
        load_policy(team_source(str(path), model_config=str(wrong_chunk)))


def test_missing_head_tensor_is_fatal_even_non_strict(tmp_path, reference, config_file):
    state = to_team_keys(reference.state_dict())
    del state["act_head.velocities.mlp.2.bias"]
    path = save_lightning(tmp_path / "broken.ckpt", state)
    with pytest.raises(CheckpointError, match="lacks 1 of the policy's .* head tensors"):
        load_policy(team_source(str(path), strict=False, model_config=str(config_file)))
    no_token = {k: v for k, v in to_team_keys(reference.state_dict()).items()
                if k != "action_token"}
    path = save_lightning(tmp_path / "no_token.ckpt", no_token)
    with pytest.raises(CheckpointError, match="action_token"):
        load_policy(team_source(str(path), strict=False, model_config=str(config_file)))


# -- ONNX export of their heads ------------------------------------------------------------------

def _export(tmp_path, ckpt, cfg):
    import contextlib
    import io

    from mobile_vla_node.export import cli

    out = tmp_path / "team.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = cli.main(["onnx", "--preset", "tiny", "--checkpoint", str(ckpt),
                       "--model-config", str(cfg), "--tokenizer-path", str(tokenizer_dir()),
                       "--output", str(out), "--parity-cases", "3"])
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue()


def _onnx_backend(path):
    from mobile_vla_node.backends.onnx_backend import OnnxBackend
    from mobile_vla_node.core.config import BackendConfig

    backend = OnnxBackend(BackendConfig(backend="onnx", model_path=str(path), warmup_iters=0))
    backend.load()
    return backend


@pytest.mark.parametrize("head", ["velocities", "classification"])
def test_onnx_export_of_their_heads_matches_torch(tmp_path, head, reference, config_file,
                                                  classifier):
    pytest.importorskip("onnxruntime")
    if head == "velocities":
        ckpt = save_lightning(tmp_path / "v.ckpt", to_team_keys(reference.state_dict()))
        cfg = config_file
    else:
        ckpt, cfg = classifier
    out, log = _export(tmp_path, ckpt, cfg)
    assert "parity" in log
    torch_policy = load_policy(team_source(str(ckpt), model_config=str(cfg)))
    onnx_backend = _onnx_backend(out)
    spec = onnx_backend.spec
    assert spec == ModelSpec.from_policy_config(torch_policy.config,
                                                torch_policy.model.feature_dim)
    assert (spec.image_norm, spec.resize_filter) == ("none", "bilinear")
    width = 6 if head == "classification" else 2
    if head == "classification":
        _force_classes(torch_policy.model, [3, 5, 1])
        ckpt2 = tmp_path / "forced.ckpt"
        state = to_team_keys(torch_policy.model.state_dict(), "logits")
        save_lightning(ckpt2, state)
        (tmp_path / "forced").mkdir()
        out, _ = _export(tmp_path / "forced", ckpt2, cfg)
        onnx_backend = _onnx_backend(out)
    frame = RNG.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    results = []
    for backend in (LoadedBackend(torch_policy), onnx_backend):
        runtime = PolicyRuntime(backend, ActionConfig())
        runtime.set_command("go to the red box")
        for _ in range(3):
            result = runtime.step(frame)
        assert result.actions.shape == (CHUNK, width)
        results.append(result)
    np.testing.assert_allclose(results[1].actions, results[0].actions, atol=1e-4)
    np.testing.assert_allclose(results[1].velocities, results[0].velocities, atol=1e-4)
    if head == "classification":
        table = torch_policy.config.class_velocities
        np.testing.assert_allclose(results[1].velocities, [table[3], table[5], table[1]])
    # what the TensorRT build reads from the same graphs (no GPU needed for this part)
    from mobile_vla_node.backends.onnx_format import read_props
    from mobile_vla_node.backends.trt_manifest import make_profiles, normalize_metadata

    meta = normalize_metadata(read_props(out))
    assert ModelSpec(**meta["model_spec"]) == onnx_backend.spec
    assert meta["normalization"]["image_norm"] == "none"
    assert meta["normalization"]["resize_filter"] == "bilinear"
    assert make_profiles(meta["model_spec"], meta["policy_config"])


def test_parent_chain_and_refused_structure(tmp_path, reference):
    write_json(tmp_path / "base.json", training_json(window_size=8))
    child = write_json(tmp_path / "child.json", {"parent": "base.json", "window_size": 4,
                                                 "act_head": {"hidden_size": 64}})
    prep = prepare(team_source(model_config=str(child)))
    assert prep.config.window_size == 4 and prep.config.lstm_hidden == 64
    assert prep.config.head_type == "MobileVLALSTMDecoder"     # from the parent's act_head
    ckpt = save_lightning(tmp_path / "v.ckpt", to_team_keys(reference.state_dict()))
    for key, value, words in (("use_vision_resampler", True, "PerceiverResampler"),
                              ("use_hand_rgb", True, "gripper camera"),
                              ("model", "paligemma", "only Kosmos-2")):
        cfg = write_json(tmp_path / f"{key}.json", training_json(**{key: value}))
        with pytest.raises(CheckpointError, match=words):
            load_policy(team_source(str(ckpt), model_config=str(cfg)))
    missing_parent = write_json(tmp_path / "orphan.json", {"parent": "gone.json"})
    with pytest.raises(FileNotFoundError, match="names parent 'gone.json'"):
        prepare(team_source(model_config=str(missing_parent)))
