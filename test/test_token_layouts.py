"""Token layouts (model/token_layouts.py): each against the team's literal sequence, its choice
from the checkpoint, the Kosmos-2 tokenizer rules, instruction blindness, and ONNX export.

Every feature comparison is on the tiny preset (latent_query_num 16) with scrambled weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from team_fixtures import (
    LoadedBackend,
    build,
    prompt_tokenizer,
    team_source,
    tiny_config,
    tokenizer_dir,
    training_json,
    write_team_checkpoint,
)

from mobile_vla_node.backends.base import BackendError
from mobile_vla_node.core.config import ActionConfig
from mobile_vla_node.core.runtime import PolicyRuntime
from mobile_vla_node.model import token_layouts as tl
from mobile_vla_node.model.errors import CheckpointError
from mobile_vla_node.model.loader import ModelSource, load_policy, prepare
from mobile_vla_node.model.tokenizer import CommandError, PromptTokenizer, load_tokenizer

LATENT = 16
RNG = np.random.default_rng(11)
IMAGE = torch.from_numpy(RNG.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8))
# Token counts with the tiny Kosmos-2-style tokenizer (<s> and </s> included).
SHORT_LEFT = "go to the left"        # 12 ids: every instruction token overwritten
SHORT_RIGHT = "go to the right"      # 12 ids, same count
LONG_LEFT = "Navigate to the gray basket on the left and then turn right to the blue door"
LONG_RIGHT = "Navigate to the gray basket on the right and then turn left to the blue door"
# Literal-sequence equality: float reduction order differs (shorter sequence); measured <= 1.4e-7.
SEQUENCE_ATOL = 1e-5


def hf_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True)


def server_ids(text: str, max_len: int):
    """Their server's tokenizer call (inference_server.py `_tokenize_instruction`)."""
    enc = hf_tokenizer()(f"<grounding>An image of a robot {text}", return_tensors="pt",
                         padding="max_length", max_length=max_len, truncation=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module", params=[tl.KOSMOS, tl.PATCHED])
def team_model(request):
    return build(tiny_config(token_layout=request.param, max_text_len=40))


def literal_feature(model, padded, mask):
    text = model.backbone.text_model.model
    with torch.no_grad():
        image = model.image_embeds(model.normalize_image(IMAGE))
        embeds, full_mask = tl.team_sequence(model.token_layout, embed=text.embed_tokens,
                                             image_embeds=image, padded_ids=padded,
                                             padded_mask=mask, action=model.action_token)
        hidden = text(inputs_embeds=embeds, attention_mask=full_mask).last_hidden_state
    return hidden[:, tl.action_index(model.token_layout, embeds.shape[1])]


@pytest.mark.parametrize("text", [SHORT_LEFT, LONG_LEFT])
def test_layout_equals_the_teams_literal_sequence(team_model, text):
    padded, mask = server_ids(text, 40)
    n = int(mask.sum())
    ids = prompt_tokenizer(team_model.config).encode(text)
    assert ids.tolist() == padded[0, :n].tolist()       # same ids as their server's tokenizer
    with torch.no_grad():
        ours = team_model.encode_frame(IMAGE, torch.from_numpy(ids)[None])
    ref = literal_feature(team_model, padded, mask)
    assert float((ours - ref).abs().max()) <= SEQUENCE_ATOL
    assert float(ref.abs().max()) > 0.1


def test_kosmos_layout_is_what_kosmos2_itself_computes_from_their_call():
    """Their fallback call: Kosmos-2 given pixel_values and image_embeds_position_mask."""
    model = build(tiny_config(max_text_len=40))
    padded, mask = server_ids(LONG_LEFT, 40)
    text = model.backbone.text_model.model
    with torch.no_grad():
        embeds = torch.cat([text.embed_tokens(padded), model.action_token.view(1, 1, -1)], 1)
        position = torch.zeros(embeds.shape[:2], dtype=torch.bool)
        position[:, :LATENT] = True
        out = model.backbone(pixel_values=model.normalize_image(IMAGE), inputs_embeds=embeds,
                             attention_mask=torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)],
                                                      1),
                             image_embeds_position_mask=position)
        ours = model.encode_frame(IMAGE, torch.from_numpy(
            prompt_tokenizer(model.config).encode(LONG_LEFT))[None])
    assert float((out.last_hidden_state[:, -1] - ours).abs().max()) <= SEQUENCE_ATOL


def test_padding_length_moves_the_action_token():
    """max_text_len decides the action token's position id, so it changes the feature."""
    a, b = (build(tiny_config(max_text_len=n)) for n in (40, 256))
    ids = torch.from_numpy(prompt_tokenizer(a.config).encode(SHORT_LEFT))[None]
    with torch.no_grad():
        assert not torch.allclose(a.encode_frame(IMAGE, ids), b.encode_frame(IMAGE, ids))


def feature(model, text):
    ids = torch.from_numpy(prompt_tokenizer(model.config).encode(text))[None]
    with torch.no_grad():
        return model.encode_frame(IMAGE, ids)


def test_kosmos_layout_is_instruction_blind_exactly_when_the_prompt_fits_the_image_tokens():
    model = build(tiny_config())
    tok = prompt_tokenizer(model.config)
    n_short, n_long = len(tok.encode(SHORT_LEFT)), len(tok.encode(LONG_LEFT))
    assert n_short == len(tok.encode(SHORT_RIGHT)) <= tl.blind_limit(LATENT) < n_long
    # left/right: the same feature, bit for bit (every instruction token is overwritten)
    assert torch.equal(feature(model, SHORT_LEFT), feature(model, SHORT_RIGHT))
    assert tl.visibility(tl.KOSMOS, n_short, LATENT).blind
    # ...but not the same for another token count: the prompt's length still counts
    assert not torch.equal(feature(model, SHORT_LEFT), feature(model, "go"))
    # a prompt longer than the image tokens keeps its tail: those words count
    assert not tl.visibility(tl.KOSMOS, n_long, LATENT).blind
    assert not torch.allclose(feature(model, LONG_LEFT), feature(model, LONG_RIGHT))
    # the other layouts see every instruction
    for layout in (tl.PATCHED, tl.PACKAGE):
        other = build(tiny_config(token_layout=layout))
        assert not torch.allclose(feature(other, SHORT_LEFT), feature(other, SHORT_RIGHT))
        assert not tl.visibility(layout, n_short, LATENT).blind


def test_blindness_boundary_from_lengths():
    assert tl.blind_limit(64) == 65
    assert tl.visibility(tl.KOSMOS, 65, 64).blind
    vis = tl.visibility(tl.KOSMOS, 66, 64)
    assert not vis.blind and vis.overwritten == 64 and "ids 64..65" in vis.describe()
    assert tl.BLIND_TEXT in tl.visibility(tl.KOSMOS, 9, 64).describe()


def test_package_layout_is_the_documented_sequence():
    """<s> <image> [image] </image> prompt [action], padding masked, positions from 2."""
    cfg = tiny_config(token_layout="package", max_text_len=0)
    model = build(cfg)
    tok = PromptTokenizer(load_tokenizer(None), cfg.prompt_template)
    ids = torch.from_numpy(tok.encode("go to the red box"))[None]
    text = model.backbone.text_model.model
    embed = text.embed_tokens
    with torch.no_grad():
        image = model.image_embeds(model.normalize_image(IMAGE))
        seq = torch.cat([embed(model.prefix_ids)[None], image, embed(model.image_end_ids)[None],
                         embed(ids), model.action_token.view(1, 1, -1)], dim=1)
        ref = text(inputs_embeds=seq).last_hidden_state[:, -1]
        assert torch.equal(model.encode_frame(IMAGE, ids), ref)


def test_unknown_layout_and_team_layout_without_max_text_len_are_refused():
    with pytest.raises(tl.TokenLayoutError, match="robovlms_kosmos"):
        tl.check_layout("kosmos")
    with pytest.raises(ValueError, match="max_text_len"):
        tiny_config(max_text_len=0)


# --- choice from the checkpoint -------------------------------------------------------------

@pytest.fixture(scope="module")
def team_files(tmp_path_factory):
    _, ckpt, cfg = write_team_checkpoint(tmp_path_factory.mktemp("team"))
    return ckpt, cfg


def test_auto_picks_the_teams_layout_with_the_reason(team_files):
    ckpt, cfg = team_files
    prep = prepare(team_source(ckpt, model_config=str(cfg)))
    assert prep.config.token_layout == tl.KOSMOS and prep.config.max_text_len == 256
    assert "base_backbone.py lines 1214-1385" in prep.notes["token_layout"]
    assert "tokenizer_path parameter" in prep.notes["tokenizer"]
    # the parameter overrides it (a checkpoint retrained with Kosmos-2 patched)
    prep = prepare(team_source(ckpt, model_config=str(cfg), token_layout=tl.PATCHED))
    assert prep.config.token_layout == tl.PATCHED
    assert prep.notes["token_layout"].endswith("(token_layout parameter)")
    # their keys without a training JSON are still their trainer's
    assert prepare(team_source(ckpt)).config.token_layout == tl.KOSMOS


def test_demo_policy_records_the_package_layout():
    prep = prepare(ModelSource("tiny"))
    assert prep.config.token_layout == tl.PACKAGE
    assert "recorded in" in prep.notes["token_layout"] and prep.layout_recorded
    assert prepare(ModelSource("small")).config.token_layout == tl.PACKAGE


def test_team_checkpoint_without_a_real_tokenizer_is_refused(team_files):
    ckpt, cfg = team_files
    with pytest.raises(CheckpointError) as err:
        load_policy(ModelSource("tiny", str(ckpt), model_config=str(cfg)))
    assert "tokenizer_path" in str(err.value) and "backbone_path" in str(err.value)
    # no silent fallback to a tokenizer.json beside their checkpoint either
    load_tokenizer(None).save(str(ckpt.parent / "tokenizer.json"))
    try:
        with pytest.raises(CheckpointError, match="tokenizer_path"):
            load_policy(ModelSource("tiny", str(ckpt), model_config=str(cfg)))
    finally:
        (ckpt.parent / "tokenizer.json").unlink()


def test_team_tokenizer_follows_their_server(team_files):
    ckpt, cfg = team_files
    loaded = load_policy(team_source(ckpt, model_config=str(cfg)))
    tok = loaded.tokenizer
    assert tok.team and tok.max_tokens == 256
    padded, mask = server_ids("go to the red box", 256)
    assert tok.encode("go to the red box").tolist() == padded[0, :int(mask.sum())].tolist()
    # their server's prompt rules: an instruction that already carries the template
    assert tok.prompt("An image of a robot go") == "<grounding>An image of a robot go"
    assert tok.prompt("<grounding>go") == "<grounding>go"
    with pytest.raises(CommandError, match="limit 256"):
        tok.encode("xyz " * 100)   # 400 characters, 400 ids
    # the export carries it
    assert PromptTokenizer.from_json(tok.to_json()).encode("go").tolist() == \
        tok.encode("go").tolist()


# --- runtime, diagnostics and export --------------------------------------------------------

def test_runtime_says_whether_the_command_counts(team_files):
    ckpt, cfg = team_files
    loaded = load_policy(team_source(ckpt, model_config=str(cfg)))
    runtime = PolicyRuntime(LoadedBackend(loaded), ActionConfig())
    assert runtime.spec.token_layout == tl.KOSMOS and runtime.spec.image_tokens == LATENT
    assert tl.BLIND_TEXT in runtime.layout_warning() and "17 ids" in runtime.layout_warning()
    assert runtime.instruction_note() == "n/a (no command)"
    runtime.set_command(SHORT_LEFT)
    assert runtime.instruction_note().startswith("yes: instruction-blind")
    runtime.set_command(LONG_LEFT)
    assert runtime.instruction_note().startswith("no: partly seen")
    demo = load_policy(ModelSource("tiny"))
    package = PolicyRuntime(LoadedBackend(demo), ActionConfig())
    package.set_command(SHORT_LEFT)
    assert package.layout_warning() == "" and package.instruction_note().startswith("no: sees")


@pytest.mark.parametrize("layout", [tl.PATCHED, tl.PACKAGE])
def test_every_layout_exports_to_onnx_with_parity(tmp_path, team_files, layout):
    """robovlms_kosmos: test_team_checkpoints.py test_onnx_export_of_their_heads_matches_torch."""
    pytest.importorskip("onnxruntime")
    import contextlib
    import io

    from mobile_vla_node.backends.onnx_backend import OnnxBackend
    from mobile_vla_node.core.config import BackendConfig
    from mobile_vla_node.export import cli

    ckpt, cfg = team_files
    out = tmp_path / f"{layout}.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = cli.main(["onnx", "--preset", "tiny", "--checkpoint", str(ckpt), "--model-config",
                       str(cfg), "--tokenizer-path", str(tokenizer_dir()), "--token-layout",
                       layout, "--output", str(out), "--parity-cases", "4"])
    assert rc == 0, buf.getvalue()
    assert "all outputs within tolerance" in buf.getvalue()
    backend = OnnxBackend(BackendConfig(backend="onnx", model_path=str(out), warmup_iters=0))
    backend.load()
    assert backend.spec.token_layout == layout
    other = tl.KOSMOS if layout != tl.KOSMOS else tl.PACKAGE
    with pytest.raises(BackendError, match=f"exported with the '{layout}' layout"):
        OnnxBackend(BackendConfig(backend="onnx", model_path=str(out), warmup_iters=0,
                                  token_layout=other)).load()
    torch_backend = LoadedBackend(load_policy(team_source(ckpt, model_config=str(cfg),
                                                          token_layout=layout)))
    image = RNG.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    for text in (SHORT_LEFT, LONG_LEFT):      # both sides of the image-token count
        ids = backend.tokenizer.encode(text)
        assert ids.tolist() == torch_backend.tokenizer.encode(text).tolist()
        history = np.zeros((0, backend.spec.feature_dim), np.float32)
        f_onnx, a_onnx = backend.infer(image, ids, history)
        f_torch, a_torch = torch_backend.infer(image, ids, history)
        np.testing.assert_allclose(f_onnx, f_torch, atol=1e-4)
        np.testing.assert_allclose(a_onnx, a_torch, atol=1e-4)


def test_diagnostics_show_whether_the_command_counts():
    from mobile_vla_node.core.config import DiagnosticsConfig
    from mobile_vla_node.core.diagnostics import NodeStats, build_statuses

    cfg = DiagnosticsConfig()
    stats = NodeStats(cfg.latency_window, 0.05)
    note = "yes: " + tl.visibility(tl.KOSMOS, 12, LATENT).describe()
    inference = build_statuses("vla", "hw", cfg, stats, {}, [], {"instruction_blind": note},
                               0.0)[0]
    assert inference.values["instruction_blind"] == note and tl.BLIND_TEXT in note
    assert build_statuses("vla", "hw", cfg, stats, {}, [], {}, 0.0)[0].values[
        "instruction_blind"] == "n/a"


def test_team_layout_export_feeds_the_tensorrt_builder_and_the_triton_repo(tmp_path, team_files,
                                                                           monkeypatch):
    """The TensorRT build (fake tensorrt, no GPU) and `vla_export triton` on robovlms_kosmos."""
    pytest.importorskip("onnxruntime")
    import contextlib
    import io

    from fakes_tensorrt import install_fakes

    from mobile_vla_node.backends import trt_manifest as tm
    from mobile_vla_node.export import cli
    from mobile_vla_node.export import tensorrt as trt_build

    ckpt, cfg = team_files
    source = ["--preset", "tiny", "--checkpoint", str(ckpt), "--model-config", str(cfg),
              "--tokenizer-path", str(tokenizer_dir())]
    out = tmp_path / "team.onnx"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = cli.main(["onnx", *source, "--output", str(out), "--parity-cases", "2"])
        assert rc == 0, buf.getvalue()
        rc = cli.main(["triton", *source, "--output", str(tmp_path / "repo"),
                       "--instance-kind", "cpu"])
    assert rc == 0, buf.getvalue()
    assert "parity feature" in buf.getvalue() and "PASS" in buf.getvalue()
    assert (tmp_path / "repo" / "mobile_vla_encoder" / "config.pbtxt").is_file()
    install_fakes(monkeypatch)
    # the team layout takes prompts up to max_text_len (256), beyond the package layout's limit
    options = trt_build.BuildOptions(onnx=out, output=None, precision="fp16", max_text_len=200)
    manifest = trt_build.build_engines(options, log=lambda line: None)
    assert manifest.profiles["encoder"]["text_ids"]["max"] == [1, 200]
    with pytest.raises(tm.ManifestError, match="256"):
        trt_build.build_engines(trt_build.BuildOptions(onnx=out, output=None, max_text_len=300),
                                log=lambda line: None)


def test_nine_class_heads_get_their_servers_default_table():
    """minuum/vla Mobile_VLA/inference_server.py (02b4c38) class_map: every component 1.15."""
    from mobile_vla_node.model.training_config import (
        default_class_velocities,
        read_training_config,
    )

    table = default_class_velocities(9)
    assert [row[:2] for row in table] == [[0, 0], [1.15, 0], [-1.15, 0], [0, 1.15], [0, -1.15],
                                          [1.15, 1.15], [1.15, -1.15], [-1.15, 1.15],
                                          [-1.15, -1.15]]
    data = training_json("MobileVLAClassificationDecoder", action_dim=9)
    data["act_head"]["num_classes"] = 9
    assert read_training_config(data).overrides["class_velocities"] == table
    data["class_map"] = {"1": [0.5, 0.0]}        # the key their server reads
    facts = read_training_config(data)
    assert facts.overrides["class_velocities"][1] == [0.5, 0.0, 0.0]
    assert facts.notes["class_velocities"].endswith("class_map")
