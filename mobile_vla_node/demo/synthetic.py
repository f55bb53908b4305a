"""A deterministic synthetic world for the demo: a room with coloured boxes and a command.

The command and the scene fully determine the correct velocity (`target_velocity`), so a policy
trained on rendered scenes can be checked by its error on held-out ones (`evaluate`). Everything
here is numpy/OpenCV and deterministic: the same `Scene` always renders the same pixels.

Conventions (REP 103, as in ``geometry_msgs/Twist``): velocity is ``[linear_x m/s, linear_y m/s
(+ = left), angular_z rad/s (+ = turn left)]``. A box's ``x`` is its horizontal centre in the
image in [-1, 1] (+ = right); its ``size`` in (0, 1] is its apparent height as a fraction of
``0.6 * height`` (bigger = closer).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 35), "green": (40, 165, 60), "blue": (40, 75, 205),
}
GO_TO = {f"go to the {color} box": color for color in COLORS}
FIXED: dict[str, tuple[float, float, float]] = {
    "move left": (0.0, 0.3, 0.0), "move right": (0.0, -0.3, 0.0),
    "move forward": (0.3, 0.0, 0.0), "move backward": (-0.3, 0.0, 0.0),
    "turn left": (0.0, 0.0, 0.5), "turn right": (0.0, 0.0, -0.5),
    "stop": (0.0, 0.0, 0.0),
}
INSTRUCTIONS: tuple[str, ...] = tuple(GO_TO) + tuple(FIXED)
# Demo order: alternates box goals with fixed motions so consecutive commands look different.
DEMO_ORDER: tuple[str, ...] = (
    "go to the red box", "turn left", "move forward", "go to the blue box", "move right",
    "stop", "go to the green box", "turn right", "move backward", "move left",
)

# "go to" rule: full speed for a far box, slowing linearly to a stop at STOP_SIZE (close enough),
# and turning toward the box in proportion to its offset from the image centre.
GO_SPEED = 0.4          # m/s at size <= FAR_SIZE
FAR_SIZE = 0.1
STOP_SIZE = 0.6
TURN_GAIN = 0.7         # rad/s per unit of x offset (|x| <= 1 -> |w| <= 0.7)
SIZE_RANGE = (0.1, 0.7)
X_RANGE = (-0.85, 0.85)
FACE = 0.6              # box face height (pixels) = size * FACE * image height


@dataclass(frozen=True)
class Box:
    """A coloured box: horizontal centre ``x`` in [-1, 1] (+ = right) and apparent ``size``."""

    color: str
    x: float
    size: float


@dataclass(frozen=True)
class Scene:
    """A command, the boxes in view, and the seed of the room's look (colours, lighting, noise)."""

    instruction: str
    boxes: tuple[Box, ...]
    seed: int = 0


def _check(scene: Scene) -> None:
    if scene.instruction not in INSTRUCTIONS:
        raise ValueError(f"unknown instruction {scene.instruction!r}; known: {INSTRUCTIONS}")
    for box in scene.boxes:
        if box.color not in COLORS:
            raise ValueError(f"unknown box color {box.color!r}; known: {sorted(COLORS)}")
        if not 0.0 < box.size <= 1.0:
            raise ValueError(f"box size {box.size!r} is outside (0, 1]")


def box_width(size: float, width: int = 640, height: int = 480) -> float:
    """Width of a box's front face in normalized x units (the image is 2 units wide)."""
    return size * FACE * height / (width / 2.0)


def random_scene(rng: np.random.Generator, instruction: str | None = None) -> Scene:
    """Draw a scene: 1-3 boxes of distinct colours, not overlapping; the named box is present."""
    if instruction is None:
        instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))]
    if instruction not in INSTRUCTIONS:
        raise ValueError(f"unknown instruction {instruction!r}; known: {INSTRUCTIONS}")
    count = int(rng.integers(1, 4))
    colors = [str(c) for c in rng.permutation(list(COLORS))[:count]]
    wanted = GO_TO.get(instruction)
    if wanted is not None:  # the goal first: it is always placed; a distractor may not fit
        colors = [wanted] + [c for c in colors if c != wanted][: count - 1]
    boxes: list[Box] = []
    for color in colors:
        for _ in range(50):
            box = Box(color, float(rng.uniform(*X_RANGE)), float(rng.uniform(*SIZE_RANGE)))
            if all(abs(box.x - b.x) > 0.5 * (box_width(box.size) + box_width(b.size))
                   for b in boxes):
                boxes.append(box)
                break
    return Scene(instruction, tuple(boxes), int(rng.integers(0, 2**31 - 1)))


def target_velocity(scene: Scene) -> np.ndarray:
    """The correct ``[linear_x, linear_y, angular_z]`` for a scene (float64, shape (3,))."""
    _check(scene)
    color = GO_TO.get(scene.instruction)
    if color is None:
        return np.array(FIXED[scene.instruction], dtype=np.float64)
    box = next((b for b in scene.boxes if b.color == color), None)
    if box is None:
        return np.zeros(3)  # the goal is not in view: wait
    closeness = (box.size - FAR_SIZE) / (STOP_SIZE - FAR_SIZE)
    speed = GO_SPEED * (1.0 - float(np.clip(closeness, 0.0, 1.0)))
    return np.array([speed, 0.0, -TURN_GAIN * float(np.clip(box.x, -1.0, 1.0))])


@functools.lru_cache(maxsize=8)
def _room(seed: int, width: int, height: int) -> dict:
    """The seed's lit room (wall, tiled floor), box tints, lighting and noise; read-only arrays."""
    import cv2

    rng = np.random.default_rng(seed)
    horizon = height * float(rng.uniform(0.38, 0.46))
    wall = rng.uniform(150, 215) + rng.uniform(-14, 14, 3)
    floor = rng.uniform(85, 145) + rng.uniform(-14, 14, 3)
    ys = np.arange(height, dtype=np.float32)[:, None]
    shade = np.where(ys < horizon, 1.0 - 0.12 * ys / max(horizon, 1.0),
                     0.85 + 0.15 * (ys - horizon) / max(height - horizon, 1.0))
    column = np.where(ys < horizon, wall.astype(np.float32), floor.astype(np.float32)) * shade
    img = cv2.resize(column.astype(np.uint8)[:, None, :], (width, height),
                     interpolation=cv2.INTER_NEAREST)
    line = tuple(int(v) for v in np.clip(floor * 0.8, 0, 255))
    vx = width * float(rng.uniform(0.3, 0.7))
    thick = max(1, round(height / 240))
    for k in range(-8, 9):  # floor lines converging on the horizon
        x_bottom = vx + k * width * 0.22
        cv2.line(img, (int(vx + k * width * 0.02), int(horizon)), (int(x_bottom), height), line,
                 thick, cv2.LINE_AA)
    depth = 0.06
    while depth < 1.0:  # tile rows, denser toward the horizon
        y = horizon + (height - horizon) * depth
        cv2.line(img, (0, int(y)), (width, int(y)), line, thick, cv2.LINE_AA)
        depth *= 1.6
    skirting = tuple(int(v) for v in np.clip(wall * 0.55, 0, 255))
    cv2.rectangle(img, (0, int(horizon) - 2 * thick), (width, int(horizon)), skirting, -1)
    # Lighting: overall gain, a left-right gradient and a colour cast.
    gain = float(rng.uniform(0.75, 1.15))
    slope = float(rng.uniform(-0.3, 0.3))
    cast = (1.0 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32)
    ramp = gain * (1.0 + slope * np.linspace(-0.5, 0.5, width, dtype=np.float32))
    light = cv2.resize((ramp[:, None] * cast)[None], (width, height),
                       interpolation=cv2.INTER_NEAREST)
    lit = cv2.multiply(img, light, dtype=cv2.CV_8U)
    # Sensor noise, 2x2-pixel grain, split in a positive and a negative part for saturating adds.
    sigma = float(rng.uniform(2.0, 6.0))
    grain = np.clip(np.round(rng.normal(0.0, sigma, ((height + 1) // 2, (width + 1) // 2))),
                    -64, 64)

    def plane(values: np.ndarray) -> np.ndarray:
        full = cv2.resize(values.astype(np.uint8), (width, height),
                          interpolation=cv2.INTER_NEAREST)
        return cv2.cvtColor(full, cv2.COLOR_GRAY2RGB)

    room = {"image": lit, "horizon": horizon, "ramp": ramp, "cast": cast,
            "tints": rng.uniform(-18, 18, (len(COLORS), 3)),
            "noise_up": plane(np.maximum(grain, 0)), "noise_down": plane(np.maximum(-grain, 0))}
    for value in room.values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return room


def _draw_box(img: np.ndarray, box: Box, room: dict) -> None:
    import cv2

    height, width = img.shape[:2]
    horizon = room["horizon"]
    side = box.size * FACE * height
    cx = (box.x + 1.0) * 0.5 * width
    bottom = horizon + (height - horizon) * (0.1 + 0.85 * min(box.size / 0.75, 1.0))
    x0, x1, top = cx - side / 2, cx + side / 2, bottom - side
    depth = 0.22 * side
    dx = (width / 2 - cx) * 0.06
    light = room["ramp"][int(np.clip(cx, 0, width - 1))] * room["cast"]
    color = np.clip(np.array(COLORS[box.color]) + room["tints"][list(COLORS).index(box.color)],
                    0, 255) * light
    cv2.ellipse(img, (int(cx), int(bottom)), (int(side * 0.6), max(2, int(side * 0.08))), 0, 0,
                360, (35, 35, 35), -1, cv2.LINE_AA)
    front = np.array([[x0, top], [x1, top], [x1, bottom], [x0, bottom]])
    lid = np.array([[x0, top], [x1, top], [x1 + dx, top - depth], [x0 + dx, top - depth]])
    for poly, gain in ((lid, 1.25), (front, 1.0)):
        pts = np.round(poly * 16).astype(np.int32)  # 4 fractional bits: sub-pixel motion
        cv2.fillConvexPoly(img, pts, tuple(float(v) for v in np.clip(color * gain, 0, 255)),
                           cv2.LINE_AA, 4)
        cv2.polylines(img, [pts], True, tuple(float(v) for v in color * 0.5), 1, cv2.LINE_AA, 4)


def render(scene: Scene, width: int = 640, height: int = 480) -> np.ndarray:
    """Render the scene as an RGB uint8 (height, width, 3) camera frame (deterministic)."""
    import cv2

    _check(scene)
    if width < 16 or height < 16:
        raise ValueError(f"render size {width}x{height} is too small (minimum 16x16)")
    room = _room(int(scene.seed), int(width), int(height))
    img = room["image"].copy()
    for box in sorted(scene.boxes, key=lambda b: b.size):  # far (small) first, near on top
        _draw_box(img, box, room)
    cv2.add(img, room["noise_up"], dst=img)
    cv2.subtract(img, room["noise_down"], dst=img)
    return img


def drift(scene: Scene, rng: np.random.Generator, frames: int, step: float = 0.03) -> list[Scene]:
    """A short sequence of ``frames`` scenes ending at ``scene``, boxes drifting by <= ``step``.

    Earlier frames move every box by a smooth random per-frame offset in x and size (same room
    seed), as when the robot or the boxes move slightly between camera frames.
    """
    if frames < 1:
        raise ValueError(f"frames={frames!r} must be >= 1")
    out = [scene]
    vel = rng.uniform(-step, step, (len(scene.boxes), 2))
    for k in range(1, frames):
        boxes = tuple(
            replace(b, x=float(np.clip(b.x - k * v[0], -1.0, 1.0)),
                    size=float(np.clip(b.size - k * v[1] * 0.5, 0.05, 1.0)))
            for b, v in zip(scene.boxes, vel, strict=True)
        )
        out.append(replace(scene, boxes=boxes))
    return out[::-1]


def demo_timeline(duration_s: float, fps: float, seed: int = 0) -> list[tuple[float, Scene]]:
    """Timed scenes for the demo: a new command every 2.5 s, boxes drifting smoothly.

    The three boxes pan left and right together (as if the robot were yawing) and grow and shrink
    independently, so "go to" commands show the turn and speed changing continuously.
    """
    if duration_s <= 0 or fps <= 0:
        raise ValueError(f"duration_s={duration_s!r} and fps={fps!r} must be > 0")
    rng = np.random.default_rng(seed)
    colors = [str(c) for c in rng.permutation(list(COLORS))]
    room = int(rng.integers(0, 2**31 - 1))
    centres = (-0.6, 0.0, 0.6)
    size_period = rng.uniform(4.0, 9.0, 3)
    size_phase = rng.uniform(0, 2 * np.pi, 3)
    pan_phase = float(rng.uniform(0, 2 * np.pi))
    start = int(rng.integers(len(DEMO_ORDER)))
    timeline = []
    for i in range(int(round(duration_s * fps))):
        t = i / fps
        pan = 0.25 * np.sin(2 * np.pi * t / 7.0 + pan_phase)  # centres stay within X_RANGE
        boxes = tuple(
            Box(colors[j], float(centres[j] + pan),
                float(0.35 + 0.22 * np.sin(2 * np.pi * t / size_period[j] + size_phase[j])))
            for j in range(3)
        )
        instruction = DEMO_ORDER[(start + int(t // 2.5)) % len(DEMO_ORDER)]
        timeline.append((t, Scene(instruction, boxes, room)))
    return timeline


def evaluate(infer_velocity, n: int = 200, seed: int = 12345) -> dict:
    """Mean absolute velocity error of ``infer_velocity(rgb, instruction)`` on held-out scenes.

    Scenes come from ``np.random.default_rng(seed)`` (training uses other seeds), with the
    instructions cycling evenly; frames are 640x480 renders. Returns ``mae`` (over all axes),
    ``mae_per_axis`` ([linear_x, linear_y, angular_z]), ``mae_per_instruction`` and ``n``.
    """
    if n < 1:
        raise ValueError(f"n={n!r} must be >= 1")
    rng = np.random.default_rng(seed)
    errors = np.zeros((n, 3))
    per: dict[str, list[float]] = {}
    for i in range(n):
        scene = random_scene(rng, INSTRUCTIONS[i % len(INSTRUCTIONS)])
        pred = np.asarray(infer_velocity(render(scene), scene.instruction), dtype=np.float64)
        if pred.shape != (3,):
            raise ValueError(f"infer_velocity returned shape {pred.shape}, expected (3,)")
        errors[i] = np.abs(pred - target_velocity(scene))
        per.setdefault(scene.instruction, []).append(float(errors[i].mean()))
    return {"mae": float(errors.mean()), "mae_per_axis": [float(v) for v in errors.mean(0)],
            "mae_per_instruction": {k: float(np.mean(v)) for k, v in per.items()}, "n": n}
