"""Cost accounting: RAPL on a fake sysfs tree, the CPU estimate, NVML absent and faked, FLOPs, time-to-accuracy,
and a real trial whose stage figures add up to its totals."""

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from harness import meters
from harness.config import TrainerConfig, validate
from harness.data.sources import Digits
from harness.errors import UserError
from harness.flops import step_flops
from harness.meters import Meter, NvmlEnergy, RaplReader, cost_figures, nvml_handles, open_cpu_source
from harness.models import MLP
from harness.train import train
from strategies import Selection
from tests.conftest import run_cli, runs_of


def zone(path: Path, name: str, energy_uj: int, max_uj: int = 1_000_000) -> Path:
    path.mkdir(parents=True)
    (path / "name").write_text(f"{name}\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two packages with a dram subzone each, a core subzone (inside the package: not added) and psys (skipped)."""
    root = tmp_path / "powercap"
    zone(root / "intel-rapl:0", "package-0", 100)
    zone(root / "intel-rapl:0" / "intel-rapl:0:0", "core", 50)
    zone(root / "intel-rapl:0" / "intel-rapl:0:1", "dram", 10)
    zone(root / "intel-rapl:1", "package-1", 200)
    zone(root / "intel-rapl:1" / "intel-rapl:1:0", "dram", 20)
    zone(root / "intel-rapl:2", "psys", 999)
    for sub in ("intel-rapl:0:0", "intel-rapl:0:1"):  # sysfs also links subzones at the top level
        (root / sub).symlink_to(root / "intel-rapl:0" / sub)
    (root / "intel-rapl:1:0").symlink_to(root / "intel-rapl:1" / "intel-rapl:1:0")
    return root


def set_uj(root: Path, rel: str, value: int) -> None:
    (root / rel / "energy_uj").write_text(f"{value}\n")


def test_rapl_sums_packages_and_dram_and_handles_wrap_around(powercap):
    r = RaplReader(powercap)
    assert [z.name for z in r.zones] == ["intel-rapl:0", "intel-rapl:0:1", "intel-rapl:1", "intel-rapl:1:0"]
    assert r.read_j() == 0.0
    set_uj(powercap, "intel-rapl:0", 100 + 3_000)
    set_uj(powercap, "intel-rapl:0/intel-rapl:0:1", 10 + 500)
    set_uj(powercap, "intel-rapl:0/intel-rapl:0:0", 50 + 7_000)  # core: part of package-0, not added again
    set_uj(powercap, "intel-rapl:2", 5_000_000)  # psys: not added
    assert r.read_j() == pytest.approx(3_500e-6)
    set_uj(powercap, "intel-rapl:1", 150)  # wrapped: 200 -> 1,000,000 (max) -> 150
    assert r.read_j() == pytest.approx((3_500 + 1_000_000 - 200 + 150) * 1e-6)


def test_rapl_permission_denied_falls_back_to_the_estimate_with_a_note(powercap):
    def opener(path: Path):
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return open(path)

    source, note = open_cpu_source(12.0, powercap, opener)
    assert source.label == "estimate"
    assert "RAPL not readable" in note and "energy_uj" in note and "PermissionError" in note
    assert "RAPL not readable" in source.note
    none, note = open_cpu_source(None, powercap, opener)  # estimate turned off: unavailable
    assert none is None and "RAPL not readable" in note


def test_rapl_energy_file_that_cannot_be_read_falls_back(tmp_path):
    root = tmp_path / "powercap"
    zone(root / "intel-rapl:0", "package-0", 1)
    (root / "intel-rapl:0" / "energy_uj").unlink()
    (root / "intel-rapl:0" / "energy_uj").mkdir()  # reading a directory fails like an unreadable file
    source, note = open_cpu_source(12.0, root)
    assert source.label == "estimate" and "RAPL unavailable" in note
    meter = Meter("cpu", watts_per_core=12.0, powercap_root=root)
    assert meter.tags()["energy_source_cpu"] == "estimate"


def busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_estimate_resolves_a_few_milliseconds_of_cpu(tmp_path):
    # os.times counts 10 ms ticks: a 3 ms stage came out 0 J or a whole tick's 0.1 J at 10 W
    meter = Meter("cpu", watts_per_core=10.0, powercap_root=tmp_path)
    for i in range(5):
        cpu0 = time.process_time()
        with meter.stage(f"short{i}"):
            busy(0.003)
        cpu_s = time.process_time() - cpu0
        energy_j = meter.totals()[f"short{i}_energy_j"]
        assert 10.0 * 0.003 <= energy_j <= 10.0 * cpu_s + 1e-9


def test_estimate_is_watts_per_core_times_cpu_seconds_and_stages_add_up(tmp_path):
    meter = Meter("cpu", watts_per_core=10.0, powercap_root=tmp_path)  # no RAPL here
    cpu0 = time.process_time()
    with meter.stage("a"):
        busy(0.2)
    cpu_a = time.process_time() - cpu0
    with meter.stage("b"):
        busy(0.1)
    t = meter.totals()
    # os.times ticks at 10 ms; process_time is finer
    assert t["a_energy_j"] == pytest.approx(10.0 * cpu_a, abs=0.25)
    assert t["a_energy_j"] >= 1.5 and t["b_energy_j"] >= 0.7
    assert t["total_energy_j"] == pytest.approx(t["a_energy_j"] + t["b_energy_j"])
    assert t["total_cpu_energy_j"] == t["total_energy_j"]
    assert math.isnan(t["total_gpu_energy_j"])
    energy_tags = {k: v for k, v in meter.tags().items() if k.startswith("energy_") and k != "energy_note"}
    assert energy_tags == {"energy_source_gpu": "unavailable", "energy_source_cpu": "estimate",
                           "energy_includes": "cpu:estimate"}

    # eval measured inside train: its seconds and the same share of energy move; the sums do not change
    meter.add("eval", t["b_s"] / 4, from_stage="b")
    t2 = meter.totals()
    assert t2["eval_energy_j"] == pytest.approx(t["b_energy_j"] / 4)
    assert t2["b_energy_j"] == pytest.approx(t["b_energy_j"] * 3 / 4)
    assert t2["total_energy_j"] == pytest.approx(t["total_energy_j"])
    assert t2["total_s"] == pytest.approx(t["total_s"])


def _touch_mib(mib: int) -> np.ndarray:
    return np.ones(mib * 2**20 // 8)  # written, so resident


@pytest.mark.skipif(not meters.CLEAR_REFS.exists(), reason="needs Linux /proc")
def test_each_stage_reports_its_own_peak_rss(tmp_path):
    meter = Meter("cpu", watts_per_core=12.0, powercap_root=tmp_path)
    if meter.memory.note:
        pytest.skip(meter.memory.note)  # a kernel that refuses the reset: covered by the next test
    with meter.stage("big"):
        block = _touch_mib(300)
        del block
    with meter.stage("small"):
        block = _touch_mib(10)
        del block
    t = meter.totals()
    # the big stage's peak holds the 300 MiB block; the small one, entered after it was freed, does not
    assert t["big_peak_rss_bytes"] - t["small_peak_rss_bytes"] > 250 * 2**20
    assert t["peak_rss_bytes"] == t["big_peak_rss_bytes"]
    assert "peak_gpu_bytes" not in t  # CPU trial: no GPU figure at all, rather than a 0


def test_a_refused_peak_reset_reports_the_process_peak_with_a_note(tmp_path):
    meter = Meter("cpu", watts_per_core=12.0, powercap_root=tmp_path, clear_refs=tmp_path / "missing" / "clear_refs")
    with meter.stage("big"):
        block = _touch_mib(300)
        del block
    with meter.stage("small"):
        pass
    t = meter.totals()
    # without the reset the later stage still sees the earlier peak: an upper bound, said so in a tag
    assert t["small_peak_rss_bytes"] >= t["big_peak_rss_bytes"] - 2**20 > 300 * 2**20
    assert "peak RSS is the process's peak so far" in meter.tags()["memory_note"]


def test_no_source_at_all_gives_nan_never_zero(tmp_path):
    meter = Meter("cpu", watts_per_core=None, powercap_root=tmp_path)
    with meter.stage("train"):
        busy(0.05)
    t = meter.totals()
    assert math.isnan(t["train_energy_j"]) and math.isnan(t["total_energy_j"])
    assert meter.tags()["energy_source_cpu"] == "unavailable" and meter.tags()["energy_includes"] == "none"
    c = cost_figures(t, 0, 475.0, 2.5, 0.04, cpu_cores=2)
    assert math.isnan(c["energy_kwh"]) and math.isnan(c["co2e_g"])
    assert c["gpu_hours"] == 0.0  # no GPU used: a true zero
    assert c["cost_usd"] == pytest.approx(2 * t["total_s"] / 3600 * 0.04)


def test_cost_figures():
    c = cost_figures({"total_s": 1800.0, "total_energy_j": 7.2e6}, 4, 400.0, 2.0, 0.05, cpu_cores=8)
    assert c == pytest.approx({"gpu_hours": 2.0, "cpu_core_hours": 4.0, "energy_kwh": 2.0, "co2e_g": 800.0,
                               "cost_usd": 2.0 * 2.0 + 4.0 * 0.05})


# ---------------------------------------------------------------- NVML


class FakeNvml:
    """The pynvml functions the meter calls, over scripted devices."""

    class NVMLError(Exception):
        pass

    def __init__(self, uuids, energy_mj=None, power_mw=None):
        self.uuids, self.energy_mj, self.power_mw = uuids, energy_mj, power_mw

    def nvmlDeviceGetCount(self):
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self.uuids):
            raise self.NVMLError("invalid index")
        return i

    def nvmlDeviceGetUUID(self, h):
        return self.uuids[h]

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.energy_mj is None:
            raise self.NVMLError("Not Supported")
        return self.energy_mj[h]

    def nvmlDeviceGetPowerUsage(self, h):
        return self.power_mw[h]


UUIDS = ["GPU-aaaa-0", "GPU-bbbb-1", "GPU-cccc-2"]


def test_visible_devices_map_to_nvml_handles():
    nv = FakeNvml(UUIDS)
    assert nvml_handles(nv, None) == [0, 1, 2]
    assert nvml_handles(nv, "2,0") == [2, 0]
    assert nvml_handles(nv, "GPU-cccc-2,bbbb") == [2, 1]  # full UUID and a prefix without "GPU-"
    assert nvml_handles(nv, "1,-1,2") == [1]  # CUDA stops at the first invalid entry
    assert nvml_handles(nv, "") == []
    with pytest.raises(ValueError, match="matches 0"):
        nvml_handles(nv, "GPU-zzzz")


def test_nvml_counter_gives_the_difference_of_the_visible_gpus_counters():
    nv = FakeNvml(UUIDS, energy_mj=[1_000, 5_000, 9_000])
    src = NvmlEnergy(nv, [2, 0])
    nv.energy_mj = [1_500, 999_999, 12_000]  # GPU 1 is not visible: not counted
    assert src.counter and src.read_j() == pytest.approx((3_000 + 500) / 1000)


def test_nvml_power_sampling_integrates_by_trapezoids_when_the_counter_is_unsupported():
    clock = iter([0.0, 1.0, 3.0])
    nv = FakeNvml(UUIDS, energy_mj=None, power_mw=[100_000, 0, 50_000])
    src = NvmlEnergy(nv, [0, 2], clock=lambda: next(clock))  # 150 W at t=0
    assert not src.counter and "power sampling" in src.note
    nv.power_mw = [200_000, 0, 50_000]  # 250 W at t=1
    assert src.read_j() == pytest.approx(0.5 * (150 + 250) * 1.0)
    nv.power_mw = [0, 0, 50_000]  # 50 W at t=3
    assert src.read_j() == pytest.approx(200 + 0.5 * (250 + 50) * 2.0)


def test_nvml_absent_gives_unavailable_and_nan(monkeypatch):
    import pynvml

    def fail():
        raise pynvml.NVMLError_LibraryNotFound()

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    src, n_gpus, note = meters.open_gpu_source(torch.device("cuda"))
    assert src is None and "NVML unavailable" in note
    # A CUDA meter (synchronisation stubbed: no GPU here) records GPU energy as NaN, tagged unavailable
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    meter = Meter("cuda", watts_per_core=5.0)
    with meter.stage("train"):
        busy(0.05)
    t = meter.totals()
    assert math.isnan(t["total_gpu_energy_j"]) and t["total_energy_j"] == t["total_cpu_energy_j"] > 0
    assert meter.tags()["energy_source_gpu"] == "unavailable" and "NVML unavailable" in meter.tags()["energy_note"]
    assert meter.tags()["energy_includes"] == "cpu:estimate"


def test_meter_samples_nvml_power_in_the_background(monkeypatch, tmp_path):
    nv = FakeNvml(UUIDS, energy_mj=None, power_mw=[100_000, 0, 0])  # a steady 100 W
    monkeypatch.setattr(meters, "open_gpu_source", lambda device: (NvmlEnergy(nv, [0]), 1, ""))
    meter = Meter("cpu", watts_per_core=12.0, poll_s=0.01, powercap_root=tmp_path)
    calls = []
    real = nv.nvmlDeviceGetPowerUsage
    monkeypatch.setattr(nv, "nvmlDeviceGetPowerUsage", lambda h: calls.append(h) or real(h))
    with meter.stage("train"):
        time.sleep(0.3)
    t = meter.totals()
    assert len(calls) >= 5  # the poller sampled between the stage's two reads
    assert t["total_gpu_energy_j"] == pytest.approx(100 * t["train_s"], rel=0.05)
    assert meter.tags()["energy_includes"] == "gpu:nvml+cpu:estimate"


# ---------------------------------------------------------------- FLOPs, time-to-accuracy, config


def test_step_flops_of_a_linear_layer_and_the_model_is_untouched():
    b, d, k = 32, 20, 7
    model = nn.Sequential(nn.BatchNorm1d(d), nn.Linear(d, k))
    before = {n: v.clone() for n, v in model.state_dict().items()}
    x, y = torch.randn(b, d), torch.randint(0, k, (b,))
    # forward 2bdk; backward: grad of the input 2bdk and of the weight 2bdk (BatchNorm is not counted)
    assert step_flops(model, x, y) == 6 * b * d * k
    assert all(torch.equal(before[n], v) for n, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def fit(**kw):
    data = Digits().load("unused")
    torch.manual_seed(0)
    cfg = OmegaConf.merge(OmegaConf.structured(TrainerConfig), {"epochs": 1, "batch_size": 128, **kw})
    return train(MLP(data.input_shape, 10), data, Selection(np.arange(len(data.y_train))), cfg, 0,
                 torch.device("cpu"), meter=Meter("cpu", watts_per_core=12.0))


def test_time_to_accuracy_never_reached_is_nan_and_training_runs_to_budget():
    out = fit(target_accuracy=1.0, stop_at_target=True)
    assert out.steps == 12 and math.isnan(out.tta_s) and math.isnan(out.tta_steps) and math.isnan(out.tta_energy_j)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.stop_at_target=true"], "trainer.stop_at_target=true: expected trainer.target_accuracy"),
    (["trainer.target_accuracy=1.5"], "trainer.target_accuracy=1.5: expected a number in (0, 1]"),
    (["cost.watts_per_core=-3"], "cost.watts_per_core=-3.0: expected a positive number or null"),
])
def test_bad_cost_and_target_values_are_refused(overrides, message, compose_cfg):
    cfg = compose_cfg("dataset=digits", *overrides)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(cfg, check_files=False)


@pytest.mark.slow  # a real CLI trial (~8 s)
def test_a_real_trial_adds_up_and_stops_at_its_target(store, cache_dir):
    res = run_cli("dataset=digits", "trainer.epochs=2", "trainer.target_accuracy=0.5", "trainer.stop_at_target=true",
                  f"tracking.uri={store}", f"cache_dir={cache_dir}")
    assert res.returncode == 0, res.stderr
    r = runs_of(store).iloc[0]
    m = {k[len("metrics."):]: v for k, v in r.items() if k.startswith("metrics.")}
    stages = ("data", "selection", "train", "eval")
    assert sum(m[f"{s}_s"] for s in stages) == pytest.approx(m["total_s"], rel=0.01)
    assert sum(m[f"{s}_energy_j"] for s in stages) == pytest.approx(m["total_energy_j"], rel=1e-9)
    assert m["total_energy_j"] == pytest.approx(m["total_cpu_energy_j"]) and m["total_energy_j"] > 0
    assert math.isnan(m["total_gpu_energy_j"]) and m["gpu_hours"] == 0.0
    assert m["energy_kwh"] == pytest.approx(m["total_energy_j"] / 3.6e6)
    assert m["co2e_g"] == pytest.approx(m["energy_kwh"] * 475.0)
    assert r["tags.energy_source_gpu"] == "unavailable" and r["tags.energy_source_cpu"] in ("rapl", "estimate")
    # digits passes 50% after one epoch (15 steps of 100): training stops there, and TTA is that point
    assert m["epochs"] == 1 and m["steps"] == m["tta_steps"] == 15
    assert 0 < m["tta_s"] <= m["train_s"] * 1.01 and 0 < m["tta_energy_j"] <= m["train_energy_j"] * 1.01 + 0.5
    assert m["train_flops"] > 0 and m["train_flops"] % m["steps"] == 0
