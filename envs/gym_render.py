"""Small matplotlib drawings for `ControlEnv.render` of systems without their own renderer.

Each drawing in `DRAWINGS` is fn(path, action, system, width, height): `path` [S,d] the
states since reset (the last is the current one), `action` [k] the last action applied
(after clipping; None before the first step). It returns a uint8 [height, width, 3]
array. Figures are drawn with the Agg canvas directly (no pyplot, no global backend
switch, no window), so they work headless and do not disturb a user's interactive
matplotlib session. About 10-40 ms per frame. matplotlib is imported on first use only.
"""
from __future__ import annotations

import numpy as np

DPI = 100


def _canvas(width: int, height: int, panels: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    span = 1.0 / panels
    axes = [fig.add_axes((i * span + 0.2 / panels, 0.12, span - 0.26 / panels, 0.76)) for i in range(panels)]
    return fig, axes


def _to_array(fig, width: int, height: int) -> np.ndarray:
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    if image.shape[:2] != (height, width):  # figsize * dpi rounding; never expected
        raise RuntimeError(f"matplotlib drew {image.shape[1]}x{image.shape[0]} pixels, "
                           f"not {width}x{height}; use sizes that are whole pixels at dpi {DPI}")
    return image.copy()


def _square_window(ax, points: np.ndarray, margin: float = 0.05):
    """Equal-scale axes around `points` [n,2] and the origin; returns the half-width."""
    low, high = np.minimum(points.min(0), 0.0), np.maximum(points.max(0), 0.0)
    centre, half = (low + high) / 2, 0.55 * (high - low).max() + margin
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal", adjustable="box")
    return half


def _path_and_target(ax, xy: np.ndarray):
    ax.plot(xy[:, 0], xy[:, 1], color="tab:blue", lw=1)
    ax.plot(0.0, 0.0, "x", color="black")


def draw_xy(path, action=None, system=None, width: int = 320, height: int = 240) -> np.ndarray:
    """Path of the first two state components (x, y) since reset, current point in red,
    target origin as a cross; the last action as a green arrow when it has two
    components (LQR: u is a velocity in the state plane). A 1-dimensional state is
    drawn against the step index."""
    path = np.asarray(path, dtype=np.float64)
    xy = path[:, :2] if path.shape[1] > 1 else np.column_stack([np.arange(len(path)), path[:, 0]])
    fig, (ax,) = _canvas(width, height)
    _path_and_target(ax, xy)
    ax.plot(xy[-1, 0], xy[-1, 1], "o", color="tab:red")
    half = _square_window(ax, xy)
    if action is not None and len(action) == 2 and path.shape[1] > 1:
        u = np.asarray(action, dtype=np.float64)
        arrow = 0.3 * half * u / max(np.linalg.norm(u), 1e-12) * min(1.0, np.linalg.norm(u))
        ax.annotate("", xy=xy[-1] + arrow, xytext=xy[-1],
                    arrowprops=dict(arrowstyle="->", color="tab:green", lw=1.5))
        ax.set_title(f"x = ({xy[-1, 0]:.2f}, {xy[-1, 1]:.2f}), u = ({u[0]:.2f}, {u[1]:.2f})", fontsize=8)
    else:
        ax.set_title("state components (x[0], x[1])", fontsize=8)
    return _to_array(fig, width, height)


def draw_pole(path, action=None, system=None, width: int = 320, height: int = 240) -> np.ndarray:
    """A unit pole about the origin at the angle path[-1, 0], radians from hanging straight
    down (counter-clockwise positive): tip at (sin angle, -cos angle)."""
    angle = float(np.asarray(path)[-1, 0])
    fig, (ax,) = _canvas(width, height)
    tip = (np.sin(angle), -np.cos(angle))
    ax.plot([0.0, tip[0]], [0.0, tip[1]], color="tab:orange", lw=4, solid_capstyle="round")
    ax.plot(0.0, 0.0, "o", color="black")
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal", adjustable="box")
    return _to_array(fig, width, height)


def draw_double_pole(path, action=None, system=None, width: int = 320, height: int = 240) -> np.ndarray:
    """Two rods chained from the origin at the absolute angles path[-1, 0] and path[-1, 1]
    (radians from hanging down, counter-clockwise positive), scaled to the system's
    lengths, with the trace of the tip since reset."""
    path = np.asarray(path, dtype=np.float64)
    params = getattr(system, "params", None)
    l1, l2 = (getattr(params, "length1", 1.0), getattr(params, "length2", 1.0))
    elbow = l1 * np.stack([np.sin(path[:, 0]), -np.cos(path[:, 0])], 1)
    tip = elbow + l2 * np.stack([np.sin(path[:, 1]), -np.cos(path[:, 1])], 1)
    fig, (ax,) = _canvas(width, height)
    ax.plot(tip[:, 0], tip[:, 1], color="tab:gray", lw=0.8)
    ax.plot([0.0, elbow[-1, 0], tip[-1, 0]], [0.0, elbow[-1, 1], tip[-1, 1]], color="tab:orange", lw=4,
            solid_capstyle="round")
    ax.plot([0.0, elbow[-1, 0]], [0.0, elbow[-1, 1]], "o", color="black")
    reach = 1.1 * (l1 + l2)
    ax.set_xlim(-reach, reach)
    ax.set_ylim(-reach, reach)
    ax.set_aspect("equal", adjustable="box")
    return _to_array(fig, width, height)


def draw_diffdrive(path, action=None, system=None, width: int = 320, height: int = 240) -> np.ndarray:
    """Top view: the path of the axle midpoint, the robot's body (a circle of the
    wheelbase's diameter), its two wheels and a heading arrow, the origin as a cross."""
    path = np.asarray(path, dtype=np.float64)
    x, y, heading = path[-1, :3]
    wheelbase = getattr(getattr(system, "params", None), "wheelbase", 1.0)
    fig, (ax,) = _canvas(width, height)
    _path_and_target(ax, path[:, :2])
    ahead, side = np.array([np.cos(heading), np.sin(heading)]), np.array([-np.sin(heading), np.cos(heading)])
    centre = np.array([x, y])
    from matplotlib.patches import Circle
    ax.add_patch(Circle(centre, wheelbase / 2, fill=False, color="tab:gray", lw=1))
    for sign in (1.0, -1.0):   # wheels: short bars along the heading at +-L/2 to the side
        mid = centre + sign * side * wheelbase / 2
        ends = np.stack([mid - 0.25 * wheelbase * ahead, mid + 0.25 * wheelbase * ahead])
        ax.plot(ends[:, 0], ends[:, 1], color="black", lw=3, solid_capstyle="butt")
    ax.annotate("", xy=centre + 0.8 * wheelbase * ahead, xytext=centre,
                arrowprops=dict(arrowstyle="->", color="tab:red", lw=1.5))
    _square_window(ax, np.vstack([path[:, :2], centre + wheelbase, centre - wheelbase]))
    ax.set_title(f"(x, y) = ({x:.2f}, {y:.2f}), heading {np.degrees(heading) % 360:.0f} deg", fontsize=8)
    return _to_array(fig, width, height)


def draw_quadrotor(path, action=None, system=None, width: int = 320, height: int = 240) -> np.ndarray:
    """Two views of position and attitude: top (x, y) and side (x, altitude = -z). The
    body frame is projected into each view: the arms along body x (red) and body y
    (blue), and the thrust direction (black, 'up' through the rotors)."""
    import torch

    from envs.quadrotor import rotation_matrix

    path = np.asarray(path, dtype=np.float64)
    pos = path[-1, :3]
    rot = rotation_matrix(torch.as_tensor(path[-1:, 3:6]))[0].numpy()   # body -> inertial
    fig, axes = _canvas(width, height, panels=2)
    views = ((0, 1, 1.0, "top view: x, y"), (0, 2, -1.0, "side view: x, altitude -z"))   # (i, j, sign of j)
    for ax, (i, j, sign, label) in zip(axes, views):
        track = np.column_stack([path[:, i], sign * path[:, j]])
        _path_and_target(ax, track)
        centre = track[-1]
        arm = 0.15 * max(np.abs(np.vstack([track, [[0.0, 0.0]]]) - centre).max(), 0.5)
        _square_window(ax, np.vstack([track, centre - arm, centre + arm]))
        for column, colour in ((0, "tab:red"), (1, "tab:blue")):
            axis = np.array([rot[i, column], sign * rot[j, column]]) * arm
            ax.plot([centre[0] - axis[0], centre[0] + axis[0]], [centre[1] - axis[1], centre[1] + axis[1]],
                    color=colour, lw=2)
        up = -np.array([rot[i, 2], sign * rot[j, 2]]) * arm   # thrust pushes along -R e3
        ax.plot([centre[0], centre[0] + up[0]], [centre[1], centre[1] + up[1]], color="black", lw=1)
        ax.set_title(label, fontsize=7)
        ax.tick_params(labelsize=6)
    tilt = np.degrees(np.arccos(np.clip(rot[2, 2], -1.0, 1.0)))
    fig.suptitle(f"position ({pos[0]:.2f}, {pos[1]:.2f}, {pos[2]:.2f}), tilt {tilt:.1f} deg", fontsize=8)
    return _to_array(fig, width, height)


def draw_electric(path, action=None, system=None, width: int = 320, height: int = 240) -> np.ndarray:
    """The unit square: electrodes coloured by their charge (red repels, blue attracts,
    size growing with |charge|), the goal's route g0 -> g1 -> g2 (dashed) and its current
    point (star), the particle's path and position (black dot)."""
    from envs.electric import goal_position

    path = np.asarray(path, dtype=np.float64)
    fig, (ax,) = _canvas(width, height)
    electrodes = np.asarray(system.params.electrodes, dtype=np.float64)
    charges = np.zeros(len(electrodes)) if action is None else np.asarray(action, dtype=np.float64)
    ax.scatter(electrodes[:, 0], electrodes[:, 1], s=20 + 120 * np.abs(charges), c=charges,
               cmap="coolwarm", vmin=-1.0, vmax=1.0, edgecolors="black", linewidths=0.5)
    goals = path[-1, 5:11].reshape(3, 2)
    ax.plot(goals[:, 0], goals[:, 1], "--", color="tab:green", lw=1)
    import torch
    goal = goal_position(torch.as_tensor(path[-1:]), system.params.segment_time)[0].numpy()
    ax.plot(goal[0], goal[1], "*", color="tab:green", ms=10)
    ax.plot(path[:, 0], path[:, 1], color="tab:gray", lw=1)
    ax.plot(path[-1, 0], path[-1, 1], "o", color="black", ms=5)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(f"t = {path[-1, 4]:.2f}, distance to goal {np.linalg.norm(path[-1, :2] - goal):.3f}",
                 fontsize=8)
    return _to_array(fig, width, height)


DRAWINGS = {
    "xy": draw_xy,
    "pole": draw_pole,
    "double_pole": draw_double_pole,
    "diffdrive": draw_diffdrive,
    "quadrotor": draw_quadrotor,
    "electric": draw_electric,
}
