"""Small matplotlib drawings for `ControlEnv.render` of systems without their own renderer.

Each function returns a uint8 [height, width, 3] array. Figures are drawn with the Agg
canvas directly (no pyplot, no global backend switch, no window), so they work
headless and do not disturb a user's interactive matplotlib session. About 10-30 ms
per frame. matplotlib is imported on first use only.
"""
from __future__ import annotations

import numpy as np

DPI = 100


def _canvas(width: int, height: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.12, 0.1, 0.83, 0.8))
    return fig, ax


def _to_array(fig, width: int, height: int) -> np.ndarray:
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    if image.shape[:2] != (height, width):  # figsize * dpi rounding; never expected
        raise RuntimeError(f"matplotlib drew {image.shape[1]}x{image.shape[0]} pixels, "
                           f"not {width}x{height}; use sizes that are whole pixels at dpi {DPI}")
    return image.copy()


def draw_xy(path: np.ndarray, width: int = 320, height: int = 240) -> np.ndarray:
    """Path of the first two state components (x, y) since reset, current point in red,
    target origin as a cross. A 1-dimensional state is drawn against the step index."""
    path = np.asarray(path, dtype=np.float64)
    path = path[:, :2] if path.shape[1] > 1 else np.column_stack([np.arange(len(path)), path[:, 0]])
    fig, ax = _canvas(width, height)
    ax.plot(path[:, 0], path[:, 1], color="tab:blue", lw=1)
    ax.plot(path[-1, 0], path[-1, 1], "o", color="tab:red")
    ax.plot(0.0, 0.0, "x", color="black")
    # a square window around the path and the origin, so that both axes share a scale
    low, high = np.minimum(path.min(0), 0.0), np.maximum(path.max(0), 0.0)
    centre, half = (low + high) / 2, 0.55 * (high - low).max() + 0.05
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal", adjustable="box")
    ax.set_title("state components (x[0], x[1])", fontsize=8)
    return _to_array(fig, width, height)


def draw_pole(angle: float, width: int = 320, height: int = 240) -> np.ndarray:
    """A unit pole about the origin at `angle` radians from hanging straight down
    (counter-clockwise positive): tip at (sin angle, -cos angle)."""
    fig, ax = _canvas(width, height)
    tip = (np.sin(angle), -np.cos(angle))
    ax.plot([0.0, tip[0]], [0.0, tip[1]], color="tab:orange", lw=4, solid_capstyle="round")
    ax.plot(0.0, 0.0, "o", color="black")
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal", adjustable="box")
    return _to_array(fig, width, height)
