"""Shared pytest setup.

MuJoCo chooses its OpenGL backend when it is first imported, so MUJOCO_GL must be set
before any test module imports mujoco: EGL renders offscreen without a display
(a "human"/glfw window would abort the process on a headless machine).
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
