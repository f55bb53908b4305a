"""Policy layout vs transformers' Kosmos2Model, presets, RoboVLMs config mapping, tokenizer."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from mobile_vla_node.model.loader import LoadedPolicy
from mobile_vla_node.model.policy import MobileVLAPolicy
from mobile_vla_node.model.presets import (
    DEFAULT_PROMPT,
    PRESETS,
    PolicyConfig,
    config_from_robovlms,
    load_config_file,
    preset_config,
)
from mobile_vla_node.model.tokenizer import (
    MAX_INSTRUCTION_CHARS,
    CommandError,
    PromptTokenizer,
    builtin_tokenizer,
    load_tokenizer,
)

COMMAND = "go to the red box"
# <grounding> an image of a robot go to the red box, in the built-in vocabulary
COMMAND_IDS = [6, 7, 8, 9, 10, 11, 12, 13, 17, 18, 22]


def scramble(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Re-draw weight matrices with a large std so outputs clearly depend on every input.

    (Freshly initialized Kosmos-2 weights have std 0.02: the action-token feature is then almost
    constant, which would let layout mistakes go unnoticed.)
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        model.action_token.copy_(torch.randn(model.action_token.shape, generator=gen))


@pytest.fixture(scope="module")
def loaded():
    """The tiny preset built from its config (not the shipped demo weights), scrambled."""
    config = preset_config("tiny")
    tokenizer = PromptTokenizer(builtin_tokenizer(), config.prompt_template, config.pad_to)
    model = MobileVLAPolicy(config, tokenizer.prefix_ids, tokenizer.image_end_id,
                            tokenizer.special_ids["<pad>"]).eval()
    scramble(model)
    return LoadedPolicy(model=model, tokenizer=tokenizer, config=config, weights="scrambled")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(11)
    return torch.from_numpy(rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8))


def _clip_normalizer(config):
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(do_resize=False, do_center_crop=False, do_rescale=True,
                   do_normalize=True, image_mean=list(config.image_mean),
                   image_std=list(config.image_std))


def test_normalization_matches_the_clip_processor(loaded, images):
    processor = _clip_normalizer(loaded.config)
    ref = torch.from_numpy(np.asarray(processor(images=list(images.numpy()),
                                                return_tensors="np")["pixel_values"]))
    ours = loaded.model.normalize_image(images)
    assert ours.shape == (2, 3, 224, 224)
    torch.testing.assert_close(ours, ref.to(ours.dtype), atol=1e-6, rtol=0)


def test_encode_frame_layout_equals_canonical_kosmos2_forward(loaded, images):
    model, tok, config = loaded.model, loaded.tokenizer, loaded.config
    ids = torch.from_numpy(tok.encode(COMMAND))[None].repeat(2, 1)
    captured = {}

    def hook(module, args, kwargs, output):
        captured["hidden"] = output.last_hidden_state

    handle = model.backbone.text_model.model.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            feature = model.encode_frame(images, ids)
    finally:
        handle.remove()
    hidden = captured["hidden"]
    n_img = config.backbone["latent_query_num"]
    assert hidden.shape == (2, 2 + n_img + 1 + ids.shape[1] + 1, model.feature_dim)
    torch.testing.assert_close(feature, hidden[:, -1], atol=0, rtol=0)

    # transformers' canonical call, laid out like Kosmos2Processor: <s> <image> [image ids]
    # </image> text, with image_embeds_position_mask marking where the image features go.
    placeholder = list(range(4, 4 + n_img))
    input_ids = torch.tensor([tok.prefix_ids + placeholder + [tok.image_end_id]] * 2)
    input_ids = torch.cat([input_ids, ids], dim=1)
    position_mask = torch.zeros_like(input_ids)
    position_mask[:, len(tok.prefix_ids):len(tok.prefix_ids) + n_img] = 1
    processor = _clip_normalizer(config)
    pixels = torch.from_numpy(np.asarray(processor(images=list(images.numpy()),
                                                   return_tensors="np")["pixel_values"]))
    with torch.inference_mode():
        ref = model.backbone(pixel_values=pixels, input_ids=input_ids,
                             image_embeds_position_mask=position_mask,
                             attention_mask=torch.ones_like(input_ids)).last_hidden_state
    # every position up to the action token (causal attention: the token cannot affect them)
    assert ref.shape[1] == hidden.shape[1] - 1
    torch.testing.assert_close(hidden[:, :-1], ref, atol=1e-6, rtol=1e-6)


def test_feature_depends_on_action_token_image_and_text(loaded, images):
    model, tok = loaded.model, loaded.tokenizer
    ids = torch.from_numpy(tok.encode(COMMAND))[None]
    other = torch.from_numpy(tok.encode("turn left"))[None]
    with torch.inference_mode():
        f = model.encode_frame(images[:1], ids)
        f_img = model.encode_frame(images[1:], ids)
        f_txt = model.encode_frame(images[:1], other)
        saved = model.action_token.detach().clone()
        model.action_token.zero_()
        f_tok = model.encode_frame(images[:1], ids)
        model.action_token.copy_(saved)
    assert f.shape == (1, model.feature_dim)
    for g in (f_img, f_txt, f_tok):
        assert (f - g).abs().max() > 1e-4


def test_forward_is_encode_per_frame_then_decode(loaded, images):
    model, tok = loaded.model, loaded.tokenizer
    ids = torch.from_numpy(tok.encode(COMMAND))[None]
    window = images[None]                       # (1, 2, S, S, 3)
    with torch.inference_mode():
        actions = model(window, ids)
        feats = torch.cat([model.encode_frame(images[i:i + 1], ids) for i in range(2)])
        ref, hn, cn = model.decode(feats[None], *model.zero_state(1))
    cfg = loaded.config
    assert actions.shape == (1, cfg.fwd_pred_next_n, cfg.action_dim)
    assert hn.shape == cn.shape == (cfg.lstm_layers, 1, cfg.lstm_hidden)
    torch.testing.assert_close(actions, ref, atol=1e-6, rtol=0)
    assert actions.abs().max() <= 1.0


def test_text_padding_is_masked_out_of_attention(loaded, images):
    """Padded prompts (configs trained with padding): what the pad embedding holds is ignored."""
    model = loaded.model
    tok = PromptTokenizer(builtin_tokenizer(), DEFAULT_PROMPT, pad_to=16)
    ids = torch.from_numpy(tok.encode(COMMAND))[None]
    assert ids.shape == (1, 16) and (ids[0, len(COMMAND_IDS):] == 1).all()
    embed = model.backbone.text_model.model.embed_tokens.weight
    saved = embed.detach().clone()
    noise = torch.randn(embed.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        f = model.encode_frame(images[:1], ids)
        try:
            embed[1] += noise                     # <pad>
            f_changed_pad = model.encode_frame(images[:1], ids)
            embed.copy_(saved)
            embed[6] += noise                     # <grounding>, a real prompt token
            f_changed_text = model.encode_frame(images[:1], ids)
        finally:
            embed.copy_(saved)
    torch.testing.assert_close(f_changed_pad, f, atol=1e-6, rtol=0)
    assert (f_changed_text - f).abs().max() > 1e-4


# -- presets and configs -----------------------------------------------------------------------

def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError) as err:
        preset_config("huge")
    text = str(err.value)
    assert "'huge'" in text
    for name in PRESETS:
        assert name in text


def test_presets_are_valid_configs():
    assert {"tiny", "small", "mobile-vla-kosmos2", "mobile-vla-kosmos2-chunk10"} <= set(PRESETS)
    for name in PRESETS:
        cfg = preset_config(name)
        assert cfg.preset == name
        assert PolicyConfig.from_dict(cfg.to_dict()) == cfg
    full = preset_config("mobile-vla-kosmos2")
    assert (full.window_size, full.fwd_pred_next_n, full.action_dim, full.lstm_hidden,
            full.lstm_layers) == (8, 1, 2, 1024, 4)
    assert full.backbone["text_config"]["embed_dim"] == 2048
    chunk10 = preset_config("mobile-vla-kosmos2-chunk10")
    assert (chunk10.window_size, chunk10.fwd_pred_next_n, chunk10.lstm_hidden) == (2, 10, 512)
    # presets are copied, not shared
    tiny = preset_config("tiny")
    tiny.backbone["text_config"]["layers"] = 99
    assert preset_config("tiny").backbone["text_config"]["layers"] == 2


def test_config_from_robovlms_maps_the_training_config():
    training = {
        "window_size": 2, "fwd_pred_next_n": 10, "model": "kosmos", "learning_rate": 1e-4,
        # (upstream "LSTMDecoder" would mean action_dim - 1 outputs plus a gripper)
        "act_head": {"type": "MobileVLALSTMDecoder", "hidden_size": 512, "num_layers": 4,
                     "action_dim": 2, "mlp_hidden": [256, 128]},
        "tokenizer": {"max_text_len": 64}, "max_linear": 0.8,
    }
    cfg = config_from_robovlms(training)
    assert cfg.preset == "mobile-vla-kosmos2"
    assert (cfg.window_size, cfg.fwd_pred_next_n, cfg.lstm_hidden, cfg.lstm_layers,
            cfg.action_dim, cfg.mlp_hidden, cfg.max_linear) == (2, 10, 512, 4, 2, [256, 128], 0.8)
    assert cfg.pad_to == 0                  # no pad_text: prompts are not padded
    assert cfg.backbone == preset_config("mobile-vla-kosmos2").backbone
    padded = config_from_robovlms({**training, "pad_text": True})
    assert padded.pad_to == 64
    # n_layer alias, fwd_pred_next_n inside the head, and other presets
    alt = config_from_robovlms({"act_head": {"n_layer": 3, "fwd_pred_next_n": 5,
                                             "hidden_size": 32, "action_dim": 3}},
                               preset="tiny")
    assert (alt.lstm_layers, alt.fwd_pred_next_n, alt.lstm_hidden, alt.action_dim) == \
        (3, 5, 32, 3)
    assert alt.window_size == preset_config("tiny").window_size


def test_native_config_round_trip_and_unknown_keys(tmp_path):
    cfg = preset_config("tiny", window_size=3)
    assert config_from_robovlms(cfg.to_dict(), preset="small") == cfg
    path = tmp_path / "config.json"
    cfg.save(path)
    assert load_config_file(path, "small") == cfg
    bad = {**cfg.to_dict(), "lstm_dropout": 0.1, "zeta": 1}
    with pytest.raises(ValueError, match=r"unknown policy config keys \['lstm_dropout', 'zeta'\]"):
        config_from_robovlms(bad)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config_file(path, "tiny")


@pytest.mark.parametrize("overrides, words", [
    (dict(window_size=0), "window_size=0"),
    (dict(fwd_pred_next_n=0), "fwd_pred_next_n=0"),
    (dict(lstm_hidden=0), "lstm_hidden=0"),
    (dict(lstm_layers=-1), "lstm_layers=-1"),
    (dict(action_dim=4), "action_dim=4"),
    (dict(action_dim=1), "action_dim=1"),
    (dict(prompt_template="An image of a robot"), "{instruction}"),
    (dict(image_size=256), "image_size=256"),
])
def test_policy_config_validation(overrides, words):
    with pytest.raises(ValueError) as err:
        preset_config("tiny", **overrides)
    assert words in str(err.value)


# -- tokenizer ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prompt():
    return PromptTokenizer(builtin_tokenizer(), DEFAULT_PROMPT)


def test_builtin_ids_for_the_prompt(prompt):
    ids = prompt.encode(COMMAND)
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert ids.tolist() == COMMAND_IDS
    vocab = prompt.tokenizer.get_vocab()
    words = ["<grounding>", "an", "image", "of", "a", "robot", "go", "to", "the", "red", "box"]
    assert COMMAND_IDS == [vocab[w] for w in words]
    # case, surrounding whitespace and unknown words
    assert prompt.encode("  Go To The RED Box ").tolist() == COMMAND_IDS
    assert prompt.encode("go to the zebra").tolist() == COMMAND_IDS[:-2] + [3]
    assert prompt.special_ids == {"<s>": 0, "<pad>": 1, "<image>": 4, "</image>": 5}
    assert prompt.prefix_ids == [0, 4] and prompt.image_end_id == 5


def test_pad_to_pads_with_pad():
    tok = PromptTokenizer(builtin_tokenizer(), DEFAULT_PROMPT, pad_to=16)
    ids = tok.encode(COMMAND)
    assert ids.tolist() == COMMAND_IDS + [1] * 5
    exact = PromptTokenizer(builtin_tokenizer(), DEFAULT_PROMPT, pad_to=len(COMMAND_IDS))
    assert exact.encode(COMMAND).tolist() == COMMAND_IDS


@pytest.mark.parametrize("text", ["", "   ", "\n\t", None, 42])
def test_empty_or_non_text_commands_raise(prompt, text):
    with pytest.raises(CommandError, match="empty instruction"):
        prompt.encode(text)


def test_too_long_commands_raise(prompt):
    text = "go " * 200
    assert len(text) > MAX_INSTRUCTION_CHARS
    with pytest.raises(CommandError, match=f"{len(text)} characters \\(limit 512\\)"):
        prompt.encode(text)
    short = PromptTokenizer(builtin_tokenizer(), DEFAULT_PROMPT, pad_to=8)
    with pytest.raises(CommandError, match=r"tokenizes to 11 ids \(limit 8\)"):
        short.encode(COMMAND)
    capped = PromptTokenizer(builtin_tokenizer(), DEFAULT_PROMPT, max_tokens=10)
    with pytest.raises(CommandError, match=r"11 ids \(limit 10\)"):
        capped.encode(COMMAND)


def test_template_must_have_instruction_field():
    with pytest.raises(ValueError, match="instruction"):
        PromptTokenizer(builtin_tokenizer(), "An image of a robot")


def test_to_json_from_json_round_trip():
    tok = PromptTokenizer(builtin_tokenizer(), "<grounding>robot {instruction} please", pad_to=20,
                          max_tokens=30)
    text = tok.to_json()
    data = json.loads(text)
    assert data["template"] == "<grounding>robot {instruction} please" and data["pad_to"] == 20
    back = PromptTokenizer.from_json(text)
    assert (back.template, back.pad_to, back.max_tokens) == (tok.template, 20, 30)
    assert back.special_ids == tok.special_ids
    for command in (COMMAND, "Turn LEFT then stop", "find the yellow ball"):
        np.testing.assert_array_equal(back.encode(command), tok.encode(command))


def test_load_tokenizer_file_folder_and_builtin(tmp_path):
    builtin_tokenizer().save(str(tmp_path / "tokenizer.json"))
    for source in (tmp_path / "tokenizer.json", tmp_path, str(tmp_path)):
        tok = PromptTokenizer(load_tokenizer(source), DEFAULT_PROMPT)
        assert tok.encode(COMMAND).tolist() == COMMAND_IDS, source
    for empty in (None, ""):
        assert PromptTokenizer(load_tokenizer(empty), DEFAULT_PROMPT).encode(COMMAND).tolist() \
            == COMMAND_IDS
    with pytest.raises(FileNotFoundError, match="missing"):
        load_tokenizer(tmp_path / "missing")


def test_tokenizer_without_kosmos_special_tokens_is_refused():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    plain = Tokenizer(WordLevel(vocab={"<unk>": 0, "go": 1}, unk_token="<unk>"))
    with pytest.raises(ValueError, match="<s>"):
        PromptTokenizer(plain, DEFAULT_PROMPT)
