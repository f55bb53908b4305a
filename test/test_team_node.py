"""Node over DDS with a classification checkpoint in the team's layout: the class's velocity."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from ros_harness import Probe, other_domain, rgb_image_msg, start_node, stop_process
from team_fixtures import (
    CHUNK,
    build,
    save_lightning,
    tiny_config,
    to_team_keys,
    tokenizer_dir,
    training_json,
)
from team_fixtures import write_json as write_config

TABLE = "0,0,0; 0.3,0,0; 0,0.25,0; 0,-0.25,0; 0.2,0.2,0; 0.2,-0.2,0"
EVENT_TIMEOUT = 90.0


@pytest.fixture
def classifier(tmp_path):
    config = tiny_config(head="classification", num_classes=6)
    model = build(config)
    with torch.no_grad():             # every chunk step: class 2 (left)
        model.act_head.logits.weight.zero_()
        bias = torch.zeros(CHUNK, 6)
        bias[:, 2] = 5.0
        model.act_head.logits.bias.copy_(bias.view(-1))
    ckpt = save_lightning(tmp_path / "cls.ckpt", to_team_keys(model.state_dict(), "logits"))
    cfg = write_config(tmp_path / "cls.json",
                       training_json("MobileVLAClassificationDecoder", action_dim=6))
    return ckpt, cfg


def test_node_publishes_the_configured_class_velocity(classifier, tmp_path):
    ckpt, cfg = classifier
    params = {"model_preset": "tiny", "model_path": str(ckpt), "model_config": str(cfg),
              "tokenizer_path": str(tokenizer_dir()), "class_velocities": TABLE,
              "max_accel_x": 0.0, "max_accel_y": 0.0, "max_accel_z": 0.0,
              "action_timeout_s": 2.0, "image_timeout_s": 1.0}
    log = tmp_path / "node.log"
    domain = other_domain()
    proc = start_node(params, log_path=log, domain=domain)
    probe = Probe("team_probe", domain=domain)
    stop = threading.Event()

    def camera():
        frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        while not stop.is_set():
            probe.image_pub.publish(rgb_image_msg(frame, probe.now()))
            stop.wait(0.1)

    thread = threading.Thread(target=camera, daemon=True)
    try:
        assert probe.wait_active(), log.read_text()
        probe.command("go to the red box")
        t0 = time.monotonic()
        thread.start()

        def left():
            return any(abs(t[2] - 0.25) < 1e-6 for t in probe.twists_since(t0))
        assert probe.wait_for(left, timeout=EVENT_TIMEOUT), (probe.twists_since(t0)[-3:],
                                                             log.read_text()[-2000:])
        moving = [t for t in probe.twists_since(t0) if any(abs(v) > 1e-9 for v in t[1:])]
        assert moving and all(np.allclose(t[1:], [0.0, 0.25, 0.0]) for t in moving)
        # their trainer's token layout: one WARN line at start says commands do not count
        warns = [line for line in log.read_text().splitlines()
                 if "token_layout robovlms_kosmos: instruction-blind" in line]
        assert len(warns) == 1 and "WARN" in warns[0], log.read_text()[-2000:]
    finally:
        stop.set()
        probe.close()
        stop_process(proc)
