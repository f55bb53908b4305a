"""Image pipelines: the named presets, the explicit choice, inspect's lines, and PIL parity.

Parity: `core.resize.resize_exact` (numpy, integer) and `model.preprocessing.FramePreprocess`
(the in-graph resize: torch int32, and the same ops in ONNX Runtime) against PIL's
``Image.resize`` for every filter: equal bit for bit (the bound of the issue is 1 uint8 level).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image
from team_fixtures import (
    build,
    save_lightning,
    tiny_config,
    to_team_keys,
    training_json,
    write_json,
)

from mobile_vla_node.core import resize as pil_resize
from mobile_vla_node.core.config import ConfigError, NodeConfig
from mobile_vla_node.core.image_pipeline import (
    CLIP_MEAN,
    CLIP_STD,
    SERVER_DEFAULT_MEAN,
    ImageChoice,
    preset,
)
from mobile_vla_node.export import checkpoint_cli
from mobile_vla_node.model.loader import ModelSource, prepare
from mobile_vla_node.model.preprocessing import FramePreprocess

PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
               "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


def pil(rgb, size, resize_filter):
    return np.asarray(Image.fromarray(rgb).resize((size, size), PIL_FILTERS[resize_filter]))


def frames():
    """Camera-like and adversarial frames at camera and odd sizes."""
    from mobile_vla_node.demo import synthetic

    rng = np.random.default_rng(3)
    out = [synthetic.render(synthetic.random_scene(rng), 640, 480),
           rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
           synthetic.render(synthetic.random_scene(rng), 1280, 720)]
    for h, w in ((300, 100), (640, 480), (120, 160), (224, 300), (5, 7)):
        out.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return out


FRAMES = frames()


# --- presets and the choice ------------------------------------------------------------------

def test_presets_name_their_source_and_values():
    server = preset("team_server", list(CLIP_MEAN), list(CLIP_STD))
    assert (server.resize_filter, server.image_mean, server.image_std) == \
        ("bicubic", CLIP_MEAN, CLIP_STD)
    assert "inference_server.py" in server.reason
    assert preset("team_server").image_mean == SERVER_DEFAULT_MEAN   # their fallback values
    old, new = preset("team_h5_2025"), preset("team_h5_2026")
    assert (old.resize_filter, old.image_mean, old.image_std) == \
        ("bilinear", (0.0,) * 3, (1.0,) * 3)
    assert (new.resize_filter, new.image_mean, new.image_std) == ("bilinear", CLIP_MEAN, CLIP_STD)
    assert "before 6423566" in old.reason and "since 6423566" in new.reason


@pytest.mark.parametrize("params, words", [
    ({"image_pipeline": "custom", "resize_filter": "bilinear"}, "needs image_mean, image_std"),
    ({"image_pipeline": "team_server", "resize_filter": "bilinear"}, "only with image_pipeline"),
    ({"image_pipeline": "custom", "resize_filter": "bicubic", "image_mean": [0.5] * 3,
      "image_std": [0.0, 1.0, 1.0]}, "std > 0"),
    ({"image_pipeline": "bicubic"}, "not one of"),
])
def test_bad_image_parameters_are_refused_by_name(params, words):
    with pytest.raises(ConfigError, match=words):
        NodeConfig.from_params(params)


def team_json(tmp_path, **top):
    return write_json(tmp_path / "mobile_vla_left_chunk10_20251218.json", training_json(**top))


def test_auto_on_a_team_config_is_a_reported_guess(tmp_path):
    prep = prepare(ModelSource("tiny", model_config=str(team_json(tmp_path))))
    cfg = prep.config
    assert (cfg.image_pipeline, cfg.resize_filter, cfg.image_norm) == \
        ("team_h5_2025", "bilinear", "none")
    assert prep.facts.image_undetermined
    assert any("cannot tell team_server, team_h5_2025, team_h5_2026 apart" in a
               for a in prep.assumed)


@pytest.mark.parametrize("name, filt, mean", [
    ("team_server", "bicubic", list(CLIP_MEAN)),       # the JSON's image_mean
    ("team_h5_2025", "bilinear", [0.0] * 3),
    ("team_h5_2026", "bilinear", list(CLIP_MEAN)),
])
def test_an_explicit_preset_is_determined(tmp_path, name, filt, mean):
    prep = prepare(ModelSource("tiny", model_config=str(team_json(tmp_path)),
                               image=ImageChoice(name)))
    cfg = prep.config
    assert (cfg.image_pipeline, cfg.resize_filter, cfg.image_mean) == (name, filt, mean)
    assert not prep.facts.image_undetermined
    assert not any("cannot tell" in a for a in prep.assumed)


def test_custom_and_package_choices(tmp_path):
    custom = ImageChoice("custom", "lanczos", 0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    prep = prepare(ModelSource("tiny", model_config=str(team_json(tmp_path)), image=custom))
    assert (prep.config.image_pipeline, prep.config.resize_filter, prep.config.image_norm,
            prep.config.image_std) == ("custom", "lanczos", "custom", [0.25] * 3)
    with pytest.raises(ValueError, match="package's own checkpoints"):
        prepare(ModelSource("tiny", model_config=str(team_json(tmp_path)),
                            image=ImageChoice("package")))


def test_the_demo_policy_records_its_pipeline():
    prep = prepare(ModelSource("tiny"))
    cfg = prep.config
    assert (cfg.image_pipeline, cfg.resize_filter, cfg.image_norm) == \
        ("package", "bicubic", "clip")
    # an explicit team preset overrides a package checkpoint's values (the user's call)
    prep = prepare(ModelSource("tiny", image=ImageChoice("team_h5_2025")))
    assert (prep.config.image_pipeline, prep.config.image_norm) == ("team_h5_2025", "none")


def _inspect(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = checkpoint_cli.main([str(a) for a in argv])
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def team_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("team_image")
    ckpt = save_lightning(folder / "last.ckpt", to_team_keys(build(tiny_config()).state_dict()))
    return ckpt, write_json(folder / "config.json", training_json())


def test_inspect_says_the_json_is_ambiguous_and_never_faithful_without_a_choice(team_ckpt):
    ckpt, cfg = team_ckpt
    rc, out = _inspect("inspect", ckpt, "--config", cfg)
    assert rc == 1
    assert "pipeline     : team_h5_2025 -- auto: train_dataset.type MobileVLAH5Dataset" in out
    assert "NOT DETERMINED: the training JSON alone is ambiguous" in out
    verdict = out[out.index("verdict"):]
    assert "runs faithfully" not in verdict and "cannot tell team_server" in verdict


def test_inspect_with_a_given_pipeline_names_it(team_ckpt):
    ckpt, cfg = team_ckpt
    rc, out = _inspect("inspect", ckpt, "--config", cfg, "--image-pipeline", "team_server")
    assert "image        : clip (mean [0.4815, 0.4578, 0.4082]" in out and "resize bicubic" in out
    assert "pipeline     : team_server -- image_pipeline: team_server (given)" in out
    assert "NOT DETERMINED" not in out and "cannot tell" not in out
    rc, out = _inspect("inspect", ckpt, "--config", cfg, "--image-pipeline", "custom")
    assert rc == 2   # custom without its values: a usage error


def test_a_team_checkpoint_without_its_training_json_has_an_undetermined_pipeline(tmp_path):
    """auto keeps the preset's pipeline: listed as a guess (node WARNING, never "faithful")."""
    ckpt = save_lightning(tmp_path / "last.ckpt", to_team_keys(build(tiny_config()).state_dict()))
    prep = prepare(ModelSource("tiny", str(ckpt)))
    assert prep.team and prep.facts is None and prep.config_file is None
    assert "no training JSON" in prep.image_undetermined
    assert prep.image_undetermined in prep.assumed
    rc, out = _inspect("inspect", ckpt)
    assert rc == 1
    assert "NOT DETERMINED: no training JSON states it" in out
    assert "no training JSON, so nothing states" in out[out.index("verdict"):]
    # Given: determined.
    given = prepare(ModelSource("tiny", str(ckpt), image=ImageChoice("team_h5_2025")))
    assert not given.image_undetermined
    assert not any("no training JSON" in a for a in given.assumed)
    rc, out = _inspect("inspect", ckpt, "--image-pipeline", "team_h5_2025")
    assert "NOT DETERMINED" not in out
    # This package's own checkpoint (its own layout) is not a team checkpoint: no such note.
    (tmp_path / "own").mkdir()
    own = save_lightning(tmp_path / "own" / "last.ckpt", build(tiny_config()).state_dict())
    assert not prepare(ModelSource("tiny", str(own))).image_undetermined


# --- parity with PIL --------------------------------------------------------------------------

@pytest.mark.parametrize("resize_filter", pil_resize.RESIZE_FILTERS)
def test_exact_tables_equal_pil_bit_for_bit(resize_filter):
    for rgb in FRAMES:
        np.testing.assert_array_equal(pil_resize.resize_exact(rgb, 224, resize_filter),
                                      pil(rgb, 224, resize_filter))


@pytest.mark.parametrize("resize_filter", pil_resize.RESIZE_FILTERS)
def test_in_graph_resize_equals_pil(resize_filter):
    module = FramePreprocess(224, resize_filter, CLIP_MEAN, CLIP_STD)
    for rgb in FRAMES[:4]:
        out = module.resize(torch.from_numpy(rgb)[None])[0].numpy()
        np.testing.assert_array_equal(out, pil(rgb, 224, resize_filter))


def test_in_graph_preprocess_normalizes_and_swaps_channels():
    module = FramePreprocess(224, "bicubic", CLIP_MEAN, CLIP_STD)
    rgb = FRAMES[0]
    ref = torch.from_numpy(pil(rgb, 224, "bicubic").astype(np.float32) / 255.0).permute(2, 0, 1)
    ref = (ref - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    torch.testing.assert_close(module(torch.from_numpy(rgb)[None])[0], ref)
    bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1]))[None]
    torch.testing.assert_close(module(bgr, swap_channels=True)[0], ref)
    with pytest.raises(ValueError, match="uint8"):
        module(torch.zeros(1, 4, 4, 3))


def test_exact_tables_equal_pil_on_random_sizes():
    """Up- and downscaling, portrait and landscape: Pillow's pass order is probed per size."""
    rng = np.random.default_rng(11)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(1, 700, 2))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for resize_filter in pil_resize.RESIZE_FILTERS:
            np.testing.assert_array_equal(pil_resize.resize_exact(rgb, 224, resize_filter),
                                          pil(rgb, 224, resize_filter), err_msg=f"{w}x{h}")
