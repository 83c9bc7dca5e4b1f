"""Every script in examples/ runs with --smoke and passes its own check.

Each example checks its outcome (a loss that falls, a cost below the untrained policy's,
gradients against central differences, accuracy against scipy's Radau) and exits non-zero
with a FAIL line otherwise, so running it is a real test. The scripts run as a user would
run them: `python examples/<name>.py --smoke` in a fresh process, from an empty working
directory. About 10-15 s per script on an idle 2-core machine (the imports take 2-3 s).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# script -> the line it prints when its check passes
SCRIPTS = {
    "spiral_neural_ode": "PASS spiral_neural_ode:",
    "custom_system": "PASS custom_system:",
    "hand_written_loop": "PASS hand_written_loop:",
    "stiff_auto": "PASS stiff_auto:",
    "bouncing_ball": "PASS bouncing_ball:",
}
TIMEOUT_S = 180     # a smoke run takes seconds; this is a hang, not a slow machine


def test_every_example_has_a_smoke_test():
    found = {p.stem for p in EXAMPLES.glob("*.py")}
    missing = sorted(found - set(SCRIPTS))
    assert not missing, f"examples without an entry in tests/test_examples.py SCRIPTS: {missing}"
    gone = sorted(set(SCRIPTS) - found)
    assert not gone, f"SCRIPTS names examples that do not exist: {gone}"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_example_smoke_run_passes_its_check(name, tmp_path):
    env = dict(os.environ, MUJOCO_GL="egl", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    tail = f"\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{name}.py --smoke exited {proc.returncode}{tail}"
    assert SCRIPTS[name] in proc.stdout, f"{name}.py --smoke did not print {SCRIPTS[name]!r}{tail}"
    assert list(tmp_path.iterdir()) == [], f"{name}.py --smoke left files in its working directory{tail}"
