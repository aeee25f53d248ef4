"""Smoke test of benchmarks/multiplier_overhead.py on its --quick setting (no speed assertions)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from benchmarks import multiplier_overhead


@pytest.mark.slow
def test_quick_run_writes_json_with_every_ratio(tmp_path: Path) -> None:
    out = tmp_path / "multiplier_overhead.json"
    result = multiplier_overhead.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    names = [r["name"] for r in saved["rows"]]
    # Where the C++ Linear builds (a C++ compiler and ninja are at hand) it is the default, and the
    # Python op is timed as a contender of its own.
    cpp = multiplier_overhead.cpp_in_use(multiplier_overhead.RunMode())
    assert names == [
        "train step plain (copy)", "train step vector/auto", "train step vector/weight", "train step vector/activation",
        "train step vector/unfused", *(["train step vector/Python op"] if cpp else []), "train step vector/auto vs unfused",
        *(["train step vector/Python op vs unfused"] if cpp else []), "forward folded", "forward vector/auto",
        "layer call vector", "layer call vector/unfused", *(["layer call vector/Python op"] if cpp else []),
        "layer call vector vs unfused", *(["layer call vector/Python op vs unfused"] if cpp else []),
    ]
    assert saved["default_linear_op"] == ("C++" if cpp else "Python")
    calls = saved["raw_times_s"]["layer_call"]
    call_rows = [r for r in saved["rows"] if r["name"].startswith("layer call ")]
    assert len(call_rows) == (5 if cpp else 3)
    for row in call_rows:
        # Per call of one tiny layer: the extra microseconds over the peer, from the same timings.
        ours = row["name"].removeprefix("layer call ").removesuffix(" vs unfused")
        assert row["peer"] == ("vector/unfused" if row["name"].endswith(" vs unfused") else "plain")
        assert row["extra_us"] == pytest.approx((statistics.median(calls[ours]) - statistics.median(calls[row["peer"]])) * 1e6)
    for row in (r for r in saved["rows"] if r not in call_rows):
        assert row["ours_s"] > 0 and row["peer_s"] > 0
        assert row["ratio"] == pytest.approx(row["ours_s"] / row["peer_s"])
        assert row["ratio_of_minima"] > 0 and row["cpu_time_ratio"] > 0 and row["paired_ratio"] > 0
    times = saved["raw_times_s"]["train_step"]
    auto = next(r for r in saved["rows"] if r["name"] == "train step vector/auto")
    paired = sorted(a / b for a, b in zip(times["vector/auto"], times["plain"]))
    assert auto["paired_ratio"] == pytest.approx((paired[0] + paired[-1]) / 2 if len(paired) == 2 else paired[len(paired) // 2])
    assert saved["fold_max_relative_error"] < 1e-5
    assert 0 < saved["multiplier_parameters"] < 0.05 * saved["parameters"]
    assert len(times["plain"]) == saved["config"]["steps"] * saved["config"]["instances"]
    assert [r["d_model"] for r in saved["sweep_rows"]] == saved["config"]["widths"]
    for row in saved["sweep_rows"]:
        # Memory is deterministic: the fused ops keep exactly what the plain model keeps, while the
        # unfused weight side keeps a copy of W_eff (and r·W) per layer.
        assert row["saved_bytes/vector"] == row["saved_bytes/plain"] < row["saved_bytes/vector/unfused"]
        assert row["saved_ratio"] == 1.0 and row["meets_goal"]
        assert row["time_ratio"] > 0 and len(row["time_times_s"]["vector"]) == saved["config"]["sweep_steps"] * saved["config"]["instances"]


def test_bad_arguments_exit() -> None:
    with pytest.raises(SystemExit):
        multiplier_overhead.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        multiplier_overhead.parse_args(["--sweep-steps", "-1"])
    with pytest.raises(SystemExit):
        multiplier_overhead.parse_args(["--instances", "0"])


def test_run_mode_wraps_every_contender_in_autocast_and_compile() -> None:
    import torch
    import torch.nn as nn

    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    assert multiplier_overhead.RunMode().call(layer) is layer
    assert multiplier_overhead.RunMode(bf16=True).call(layer)(x).dtype == torch.bfloat16
    compiled = multiplier_overhead.RunMode(compile=True).call(layer)
    assert compiled is not layer and compiled._orig_mod is layer  # not run here: compiling takes minutes on a CPU
    assert multiplier_overhead.parse_args(["--compile", "--warmup", "0"]).warmup == 1


@pytest.mark.slow
def test_every_model_and_batch_is_put_on_the_requested_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``--device cuda`` the train-step rows once ran on the CPU: the base model and batch were
    never moved. Every GPT the benchmark builds must be moved to ``--device``, and every batch too."""
    from reference_models import GPT

    built, moved, batches = [], [], []
    real_init, real_to, real_batch = GPT.__init__, GPT.to, multiplier_overhead._batch

    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real_init(self, *args, **kwargs)
        built.append(id(self))

    def to(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        moved.append((id(self), args[0] if args else kwargs.get("device")))
        return real_to(self, *args, **kwargs)

    def batch(config, batch, seq_len, device):  # type: ignore[no-untyped-def]
        batches.append(device)
        return real_batch(config, batch, seq_len, device)

    monkeypatch.setattr(GPT, "__init__", init)
    monkeypatch.setattr(GPT, "to", to)
    monkeypatch.setattr(multiplier_overhead, "_batch", batch)
    multiplier_overhead.main(["--quick", "--device", "cpu", "--widths", "32", "--sweep-steps", "1"])
    assert built and set(built) <= {i for i, device in moved if device == "cpu"}
    assert batches and set(batches) == {"cpu"}


def test_gpu_checks_script_runs_commands_this_version_accepts() -> None:
    """benchmarks/gpu_checks.sh runs only where a GPU is lent, so its arguments are checked here."""
    import re
    import shlex

    from benchmarks import optimizer_step

    script = (Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_checks.sh").read_text()
    commands = {}
    for m in re.finditer(r'^step (\w+) \d+ "\$python" -m (\S+) (.*?)(?<!\\)$', script.replace("\\\n", " "), flags=re.M):
        commands[m.group(2)] = [a for a in shlex.split(m.group(3)) if not a.startswith('$out')]
    assert set(commands) == {"pytest", "benchmarks.optimizer_step", "benchmarks.multiplier_overhead"}
    parsers = {"benchmarks.optimizer_step": optimizer_step.parse_args, "benchmarks.multiplier_overhead": multiplier_overhead.parse_args}
    for module, parse in parsers.items():
        argv = commands[module]
        if "--out" in argv:  # its value was the $out path, dropped above
            argv.remove("--out")
        args = parse(argv)
        assert args.device == "cuda"
