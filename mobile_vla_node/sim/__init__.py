"""vla_sim: a MuJoCo world of the team's task that the node drives over DDS (docs/SIM.md).

Build-time side: the node never imports this package. MuJoCo picks its OpenGL backend when it is
first imported, so the off-screen default (EGL) is set here, before anything imports it.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] == "egl":
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
