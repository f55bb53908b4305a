"""The scripted expert: privileged state (object positions) -> a body-frame Twist.

It plans a shortest path from the start to the target around the other objects (each an inflated
circle; nodes on circles around them; Dijkstra over the segments that are free), then follows it
holonomically: it translates toward the next waypoint, turns to face the target, slows down
linearly and stops ``STOP_DISTANCE`` from the target's centre. It is the baseline that validates
the world and the teacher of the sim policy.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from .suites import FOOTPRINT, STOP_DISTANCE, Episode
from .world import ROBOT_RADIUS

MAX_SPEED = 0.4        # m/s, translation
MAX_TURN = 0.8         # rad/s
SPEED_GAIN = 0.8       # 1/s: speed = gain * distance still to go
TURN_GAIN = 1.5        # 1/s: yaw rate = gain * bearing of the target
MARGIN = 0.15          # m of extra clearance around obstacles
REACHED = 0.25         # m: a waypoint closer than this is passed


def _segment_hits(a: np.ndarray, b: np.ndarray, centre: np.ndarray, radius: float) -> bool:
    ab = b - a
    t = float(np.clip(np.dot(centre - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(a + t * ab - centre)) < radius


def plan(episode: Episode, start: np.ndarray | None = None) -> list[np.ndarray]:
    """Waypoints (x, y) from the start to the target's centre, around the other objects."""
    s = np.array(episode.start[:2] if start is None else start[:2], dtype=np.float64)
    target = episode.target_object
    goal = np.array([target.x, target.y])
    circles = [(np.array([o.x, o.y]), FOOTPRINT[o.kind] + ROBOT_RADIUS + MARGIN)
               for o in episode.objects if o is not target]
    nodes = [s, goal]
    for centre, radius in circles:
        for k in range(16):
            a = 2 * math.pi * k / 16
            p = centre + (radius + 0.06) / math.cos(math.pi / 16) * np.array([math.cos(a),
                                                                               math.sin(a)])
            if all(np.linalg.norm(p - c) >= r for c, r in circles):
                nodes.append(p)

    def free(i: int, j: int) -> bool:
        return not any(_segment_hits(nodes[i], nodes[j], c, r) for c, r in circles)

    dist = {0: 0.0}
    prev: dict = {}
    heap = [(0.0, 0)]
    done = set()
    while heap:
        d, i = heapq.heappop(heap)
        if i in done:
            continue
        done.add(i)
        if i == 1:
            break
        for j in range(len(nodes)):
            if j in done or j == i:
                continue
            nd = d + float(np.linalg.norm(nodes[j] - nodes[i]))
            if nd < dist.get(j, math.inf) and free(i, j):
                dist[j], prev[j] = nd, i
                heapq.heappush(heap, (nd, j))
    if 1 not in prev and not free(0, 1):
        return [goal]  # boxed in: head for the goal (the episode will fail honestly)
    path, i = [], 1
    while i != 0:
        path.append(nodes[i])
        i = prev.get(i, 0)
    return path[::-1]


class Expert:
    """Follows `plan` for one episode; `act(pose)` returns the body-frame Twist."""

    def __init__(self, episode: Episode):
        self.episode = episode
        self.waypoints = plan(episode)
        self.index = 0
        target = episode.target_object
        self.goal = np.array([target.x, target.y])
        self.stop_distance = STOP_DISTANCE[target.kind]

    def act(self, pose: np.ndarray) -> np.ndarray:
        """Twist ``[vx, vy, wz]`` (robot frame) for the pose ``[x, y, yaw]``."""
        pos, yaw = np.asarray(pose[:2], dtype=np.float64), float(pose[2])
        while self.index < len(self.waypoints) - 1 and \
                np.linalg.norm(self.waypoints[self.index] - pos) < REACHED:
            self.index += 1
        to_goal = self.goal - pos
        remaining = float(np.linalg.norm(to_goal)) - self.stop_distance
        bearing = math.atan2(to_goal[1], to_goal[0]) - yaw
        bearing = math.atan2(math.sin(bearing), math.cos(bearing))
        wz = float(np.clip(TURN_GAIN * bearing, -MAX_TURN, MAX_TURN))
        if abs(wz) < 0.02:
            wz = 0.0
        if remaining <= 0.02:
            return np.array([0.0, 0.0, wz])
        aim = self.waypoints[self.index] - pos
        if self.index == len(self.waypoints) - 1:
            aim = to_goal
        if self.index < len(self.waypoints) - 1:
            remaining += float(np.linalg.norm(aim))  # a detour is still ahead: keep speed
        speed = min(MAX_SPEED, SPEED_GAIN * remaining)
        direction = aim / max(float(np.linalg.norm(aim)), 1e-9)
        c, s = math.cos(yaw), math.sin(yaw)
        body = np.array([c * direction[0] + s * direction[1], -s * direction[0] +
                         c * direction[1]]) * speed
        return np.array([body[0], body[1], wz])
