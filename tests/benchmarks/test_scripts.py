"""Every training benchmark starts both ways the README gives: as a file (``python benchmarks/x.py``,
from any directory, without PYTHONPATH) and as a module (``python -m benchmarks.x``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ["adam_vs_muon", "scale_sweep", "hparam_sensitivity", "freed_scales", "multiplier_ablation"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_starts_as_a_file_and_as_a_module(name, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    as_file = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--help"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
    assert as_file.returncode == 0, as_file.stderr
    as_module = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=300)
    assert as_module.returncode == 0, as_module.stderr
    assert "--preset" in as_file.stdout and "--preset" in as_module.stdout
