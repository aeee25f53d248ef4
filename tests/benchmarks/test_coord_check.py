"""Smoke test of benchmarks/coord_check.py on its --quick setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import coord_check


@pytest.mark.slow
def test_quick_run_writes_json_and_sp_output_grows_faster_than_mup(tmp_path: Path) -> None:
    out = tmp_path / "coord_check.json"
    result = coord_check.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["results"]) == {"muP", "SP"}
    for name in ("muP", "SP"):
        r = saved["results"][name]
        assert r["widths"] == [32, 64] and r["steps"] == 2
        assert "lm_head" in r["slopes_last_step"] and "wte" in r["slopes_last_step"]
    mup, sp = saved["results"]["muP"]["slopes_last_step"], saved["results"]["SP"]["slopes_last_step"]
    assert sp["lm_head"] > mup["lm_head"] + 0.3
    try:
        import matplotlib  # noqa: F401

        assert saved["png"] is not None and Path(saved["png"]).exists()
    except ImportError:
        assert saved["png"] is None
    assert result["config"]["quick"] is True


def test_bad_widths_exit() -> None:
    with pytest.raises(SystemExit):
        coord_check.parse_args(["--widths", "64"])
    with pytest.raises(SystemExit):
        coord_check.parse_args(["--widths", "20", "40"])
