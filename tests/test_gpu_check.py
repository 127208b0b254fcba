"""scripts/gpu_check.py, the prepared check for a lent GPU machine: its CPU path, and one part's failure or overrun
recorded while the others still run."""

import importlib.util
import json
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import HANG_S, REPO

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
gpu_check = sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)  # a script, not a package module
spec.loader.exec_module(gpu_check)

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path: this machine has a CUDA GPU")


def results(out) -> dict:
    return {p["part"]: p for p in json.loads((out / "gpu_check.json").read_text())["parts"]}


@needs_no_gpu
@pytest.mark.slow  # runs part (a)'s trials at a tiny size: 10-30 s on 2 cores
def test_without_a_gpu_it_says_so_in_one_line_runs_the_cpu_parts_and_exits_0(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0  # without a GPU: tiny sizes, seconds
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("gpu_check: no CUDA GPU visible") and sum("no CUDA GPU" in ln for ln in printed) == 1
    parts = results(tmp_path)
    assert {k: p["status"] for k, p in parts.items()} == {"a": "ok", "b": "ok", "c": "skipped", "d": "skipped",
                                                         "e": "ok", "f": "skipped"}
    assert parts["c"]["error"] == "needs a CUDA GPU"
    assert parts["b"]["figures"]["harness_samples_per_s"] > 0 and parts["b"]["figures"]["bare_samples_per_s"] > 0
    assert 0 <= parts["a"]["figures"]["default_mean_accuracy"] <= 1
    assert parts["e"]["figures"]["removed"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| c | four trials packed on one GPU" in table and "GPU: none" in table


def test_a_failing_or_overrunning_part_is_recorded_and_the_others_still_run(tmp_path):
    def ok(ctx, res):
        res.figures["x"] = 1
        res.goal("x is 1", 1, "1", True)

    def broken(ctx, res):
        res.figures["before"] = "kept"
        raise RuntimeError("deliberate\nsecond line")

    def slow(ctx, res):
        res.figures["started"] = True
        time.sleep(30)

    ctx = gpu_check.Ctx(torch.device("cpu"), True, tmp_path)
    parts = [("p", "broken", 10, broken), ("q", "slow", 0.3, slow), ("r", "fine", 10, ok)]
    got = {r.part: r for r in gpu_check.run_parts(parts, ctx)}
    assert got["p"].status == "failed" and got["p"].error == "RuntimeError: deliberate"
    assert got["p"].figures["before"] == "kept"
    assert got["q"].status == "timeout" and got["q"].figures == {"started": True}
    assert got["r"].status == "ok" and got["r"].goals[0]["met"]
    gpu_check.write_results(tmp_path, gpu_check.environment(), list(got.values()), tiny=True)
    assert "| p | broken | failed |" in (tmp_path / "gpu_check.md").read_text()


def test_results_files_hold_every_finished_part_when_the_run_is_stopped_midway(tmp_path):
    """A device call stopped at its time limit kills the check mid-part: the files written after the last finished
    part must be there, complete, with its figures (the second H200 run came back with printed lines only)."""
    env = gpu_check.environment()

    def first(ctx, res):
        res.figures["x"] = 7

    def killed(ctx, res):  # what the call's time limit does to the process, short of killing pytest
        raise KeyboardInterrupt

    ctx = gpu_check.Ctx(torch.device("cpu"), True, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.run_parts([("a", "first", 10, first), ("b", "killed", 10, killed)], ctx,
                            after_each=lambda done: gpu_check.write_results(tmp_path, env, done, True))
    assert {k: p["status"] for k, p in results(tmp_path).items()} == {"a": "ok"}
    assert results(tmp_path)["a"]["figures"] == {"x": 7}
    assert "| a | first | ok |" in (tmp_path / "gpu_check.md").read_text()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
@needs_no_gpu
def test_the_shell_wrapper_runs_the_cpu_path_and_the_ray_parts_run_with_a_simulated_gpu(tmp_path):
    # what a lent machine runs, end to end on the CPU; c and f through the Ray launcher with one logical GPU (c) and
    # CPU workers (f), budgets scaled for a 2-core machine: their code paths, not their GPU figures
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path)],
                          capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("gpu_check: no CUDA GPU visible")
    sim = tmp_path / "sim"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--tiny", "--simulate-gpu",
                           "--only", "c,f", "--budget-scale", "6", "--out", str(sim)],
                          capture_output=True, text=True, timeout=HANG_S)
    parts = results(sim)
    assert proc.returncode == 0, (proc.stdout, parts)
    assert parts["c"]["figures"]["packed_finished"] == 4 and parts["c"]["figures"]["one_at_a_time_finished"] == 4
    assert parts["c"]["figures"]["packed_distinct_configs"] == 4
    assert parts["f"]["figures"]["statuses"] == ["FINISHED"]
