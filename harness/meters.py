"""One meter API around each stage of a trial: wall time, energy and peak memory per stage (docs/cost.md).

    meter = Meter(device, watts_per_core=cfg.cost.watts_per_core)
    with meter.stage("train"):
        ...
    meter.add("eval", eval_s, from_stage="train")   # time measured inside train, with its share of energy
    meter.totals()  -> {"train_s": ..., "train_energy_j": ..., "train_peak_rss_bytes": ..., "total_s": ...,
                        "total_energy_j": ..., "peak_rss_bytes": ...}
    meter.tags()    -> {"energy_source_gpu": "nvml", "energy_source_cpu": "estimate", ...}

Each energy source is a cumulative reader (`read_j()`: joules since the source was opened); a stage's energy is
the difference of the readings at its ends, so stage energies add up to the total by construction. Sources:
GPU via NVML (energy counter, else power sampled in a background thread while a stage is open), CPU package +
DRAM via RAPL powercap sysfs, else an estimate from the process's CPU seconds. A figure that cannot be measured
is NaN with source `unavailable`, never 0. Peak memory per stage: host RSS from Linux's high-water mark, reset at
each stage start (PeakMemory), and torch's CUDA peak statistics, reset likewise.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol

import torch

log = logging.getLogger(__name__)

NAN = float("nan")
POWERCAP_ROOT = Path("/sys/class/powercap")
CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATUS = Path("/proc/self/status")


class EnergySource(Protocol):
    label: str  # nvml | rapl | estimate
    note: str  # how it measures (or why it fell back), for the run's tags

    def read_j(self) -> float: ...  # joules since the source was opened; monotonic

    def poll(self) -> None: ...  # called from the background thread while a stage is open


# ---------------------------------------------------------------- CPU: RAPL


class RaplReader:
    """CPU package and DRAM energy from the powercap sysfs (`intel-rapl:<pkg>` zones and their `dram` subzones).

    AMD Zen CPUs appear under the same `intel-rapl` control type (the kernel's intel_rapl_msr driver serves
    both), so one naming covers them. `psys` (platform) zones are skipped: they include the packages.
    Counters wrap at `max_energy_range_uj`; a wrap is detected as a decrease, so reads must come more often
    than one wrap period (minutes at full load): the meter polls every `poll_s` while a stage is open.
    `opener` is injectable for tests (permission errors on a fake sysfs tree).
    """

    label = "rapl"

    def __init__(self, root: Path = POWERCAP_ROOT, opener: Callable[[Path], IO[str]] | None = None) -> None:
        self._open = opener or (lambda p: open(p))  # noqa: SIM115 - closed by the caller's `with`
        self.zones: list[Path] = []
        for pkg in sorted(root.glob("intel-rapl:*")):
            if pkg.name.count(":") != 1 or not self._name(pkg).startswith("package"):
                continue
            self.zones.append(pkg)
            self.zones += [sub for sub in sorted(pkg.glob(f"{pkg.name}:*")) if self._name(sub).startswith("dram")]
        if not self.zones:
            raise OSError(f"no RAPL package zones under {root}")
        self.max_uj = [self._read_int(z / "max_energy_range_uj") for z in self.zones]
        self.last_uj = [self._read_int(z / "energy_uj") for z in self.zones]  # raises when not readable
        self.total_uj = 0
        self.note = "rapl: " + ", ".join(f"{z.name} ({self._name(z)})" for z in self.zones)
        self._lock = threading.Lock()

    def _name(self, zone: Path) -> str:
        try:
            with self._open(zone / "name") as f:
                return f.read().strip()
        except OSError:
            return ""

    def _read_int(self, path: Path) -> int:
        with self._open(path) as f:
            return int(f.read().strip())

    def read_j(self) -> float:
        with self._lock:
            for i, zone in enumerate(self.zones):
                now = self._read_int(zone / "energy_uj")
                delta = now - self.last_uj[i]
                if delta < 0:  # wrapped around max_energy_range_uj since the last read
                    delta += self.max_uj[i]
                self.total_uj += delta
                self.last_uj[i] = now
            return self.total_uj / 1e6

    def poll(self) -> None:
        self.read_j()


class CpuEstimate:
    """Watts per busy core x CPU seconds (user + system) of this process and its waited-for children.

    CPU time is read at microsecond resolution (`time.process_time`, getrusage for children), not in the 10 ms
    clock ticks of `os.times`, which charged a 3 ms stage 0 J or a whole tick's worth.
    """

    label = "estimate"

    def __init__(self, watts_per_core: float, reason: str = "") -> None:
        self.watts_per_core = watts_per_core
        self.start_cpu_s = self._cpu_s()
        self.note = f"estimate: {watts_per_core:g} W per busy core x CPU seconds" + (f" ({reason})" if reason else "")

    @staticmethod
    def _cpu_s() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def read_j(self) -> float:
        return (self._cpu_s() - self.start_cpu_s) * self.watts_per_core

    def poll(self) -> None:
        pass


def open_cpu_source(watts_per_core: float | None, root: Path = POWERCAP_ROOT,
                    opener: Callable[[Path], IO[str]] | None = None) -> tuple[EnergySource | None, str]:
    """RAPL when readable, else the estimate (None when `watts_per_core` is None), and a note saying why."""
    try:
        return RaplReader(root, opener), ""
    except PermissionError as e:  # energy_uj is root-only since Linux 5.10 (CVE-2020-8694)
        reason = f"RAPL not readable: {e.filename or root} ({type(e).__name__}); run as root or grant read access"
    except (OSError, ValueError) as e:
        reason = f"RAPL unavailable: {e}"
    if watts_per_core is None:
        return None, reason
    return CpuEstimate(watts_per_core, reason), reason


# ---------------------------------------------------------------- GPU: NVML


def visible_gpu_ids(env: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list of ids (indices or UUID prefixes); None: unset (every GPU is visible)."""
    if env is None:
        return None
    ids = []
    for item in env.split(","):
        item = item.strip()
        if not item or item == "-1" or (item.lstrip("-").isdigit() and int(item) < 0):
            break  # CUDA stops at the first invalid entry
        ids.append(item)
    return ids


def nvml_handles(pynvml, env: str | None) -> list:
    """NVML handles of the GPUs this process sees, in CUDA's order.

    Indices are taken as NVML indices (NVML numbers GPUs in PCI bus order; CUDA does too with
    CUDA_DEVICE_ORDER=PCI_BUS_ID, which launchers that set CUDA_VISIBLE_DEVICES by index assume). UUIDs and
    unique UUID prefixes (`GPU-8f2e`) are matched against every device's UUID.
    """
    ids = visible_gpu_ids(env)
    n = pynvml.nvmlDeviceGetCount()
    if ids is None:
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
    handles = []
    uuids = None
    for item in ids:
        if item.isdigit():
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(item)))
            continue
        if uuids is None:
            uuids = []
            for i in range(n):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                u = pynvml.nvmlDeviceGetUUID(h)
                uuids.append((u.decode() if isinstance(u, bytes) else u, h))
        match = [h for u, h in uuids if u.startswith(item) or u.startswith(f"GPU-{item}")]
        if len(match) != 1:
            raise ValueError(f"CUDA_VISIBLE_DEVICES entry {item!r} matches {len(match)} NVML devices")
        handles.append(match[0])
    return handles


class NvmlEnergy:
    """Energy of the visible GPUs: the total-energy counter (mJ, Volta and later) where every GPU has it,
    else power (mW) sampled every `poll_s` while a stage is open and at each read, integrated by trapezoids."""

    label = "nvml"

    def __init__(self, pynvml, handles: list, clock: Callable[[], float] = time.perf_counter) -> None:
        if not handles:
            raise ValueError("no visible GPUs")
        self.nv, self.handles, self.clock = pynvml, handles, clock
        self._lock = threading.Lock()
        try:
            self.start_mj = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]
            self.counter = True
        except pynvml.NVMLError:
            self.counter = False
            self.last_t = clock()
            self.last_w = self._watts()  # raises when power readings are unsupported too
            self.total_j = 0.0
        self.note = f"nvml {'energy counter' if self.counter else 'power sampling'} over {len(handles)} GPU(s)"

    def _watts(self) -> float:
        return sum(self.nv.nvmlDeviceGetPowerUsage(h) for h in self.handles) / 1000.0

    def read_j(self) -> float:
        if self.counter:
            now = [self.nv.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
            return sum(b - a for a, b in zip(self.start_mj, now)) / 1000.0
        with self._lock:
            t, w = self.clock(), self._watts()
            self.total_j += 0.5 * (w + self.last_w) * (t - self.last_t)
            self.last_t, self.last_w = t, w
            return self.total_j

    def poll(self) -> None:
        if not self.counter:
            self.read_j()


def open_gpu_source(device: torch.device) -> tuple[EnergySource | None, int, str]:
    """(NVML source or None, number of visible GPUs the trial holds, note). CPU trials hold no GPU."""
    if device.type != "cuda":
        return None, 0, "the trial uses no GPU"
    n_gpus = torch.cuda.device_count()
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = nvml_handles(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"))
        return NvmlEnergy(pynvml, handles), len(handles), ""
    except Exception as e:  # no driver, no library, unsupported GPU: the figure is unavailable, not 0
        return None, n_gpus, f"NVML unavailable: {type(e).__name__}: {e}"


# ---------------------------------------------------------------- peak memory


class PeakMemory:
    """Peak host RSS of this process, and peak CUDA memory of `device`, since the last `reset()`.

    Linux keeps one RSS high-water mark per process (VmHWM; getrusage's ru_maxrss reads it too). Writing 5 to
    /proc/self/clear_refs resets it, so each stage gets its own peak and a Ray worker that runs one trial after
    another does not report an earlier trial's. Where the kernel refuses the reset, the figure is the process's
    peak so far (an upper bound) and `note` says so.
    """

    def __init__(self, device: torch.device, clear_refs: Path = CLEAR_REFS, status: Path = PROC_STATUS) -> None:
        self.device, self.clear_refs, self.status = device, clear_refs, status
        self.cuda = device.type == "cuda" and torch.cuda.is_available()
        self.note = ""
        self.reset()

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.note:
            return  # the reset was refused before; do not retry every stage
        try:
            with open(self.clear_refs, "w") as f:
                f.write("5")
        except OSError as e:
            self.note = (f"peak RSS is the process's peak so far, not per stage: cannot reset the high-water mark "
                         f"({self.clear_refs}: {e.strerror or e})")

    def _rss_bytes(self) -> float:
        try:
            for line in self.status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024  # kB
        except OSError:
            pass
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux

    def read(self) -> dict[str, float]:
        """{"peak_rss_bytes": ...} plus, on CUDA, "peak_gpu_bytes" (allocated) and "peak_gpu_reserved_bytes"."""
        out = {"peak_rss_bytes": self._rss_bytes()}
        if self.cuda:
            out["peak_gpu_bytes"] = float(torch.cuda.max_memory_allocated(self.device))
            out["peak_gpu_reserved_bytes"] = float(torch.cuda.max_memory_reserved(self.device))
        return out


# ---------------------------------------------------------------- the meter


class Meter:
    """Seconds, joules and peak memory per named stage; CUDA work is synchronised at both ends of a stage.

    `watts_per_core=None` turns the CPU estimate off (CPU energy is then NaN without RAPL). `poll_s` is the
    background thread's period (power sampling, RAPL wrap-around); it runs only while a stage is open and only
    when a source needs it.
    """

    def __init__(self, device: torch.device | str, *, watts_per_core: float | None, poll_s: float = 0.1,
                 powercap_root: Path = POWERCAP_ROOT, clear_refs: Path = CLEAR_REFS) -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, dict[str, float]] = {}  # stage -> {"peak_rss_bytes": ..., ...}
        self.memory = PeakMemory(self.device, clear_refs)
        self.energy: dict[str, dict[str, float]] = {"gpu": {}, "cpu": {}}  # source kind -> stage -> joules
        gpu, self.n_gpus, gpu_note = open_gpu_source(self.device)
        cpu, cpu_note = open_cpu_source(watts_per_core, powercap_root)
        self.sources: dict[str, EnergySource | None] = {"gpu": gpu, "cpu": cpu}
        # a source's note says how it measures (the estimate's includes why RAPL was not used); else why none
        self.notes = {"gpu": gpu.note if gpu is not None else gpu_note,
                      "cpu": cpu.note if cpu is not None else cpu_note}
        self.poll_s = poll_s
        self._polled = [s for s in self.sources.values() if isinstance(s, RaplReader | NvmlEnergy)]
        for kind, note in self.notes.items():
            log.info("energy (%s): %s", kind, note)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _read(self) -> dict[str, float]:
        return {k: s.read_j() for k, s in self.sources.items() if s is not None}

    def energy_j(self) -> float:
        """Energy of the available sources since the meter was made (NaN when none is available)."""
        r = self._read()
        return sum(r.values()) if r else NAN

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        self.memory.reset()
        stop = self._start_poller()
        before = self._read()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            after = self._read()
            stop()
            for kind, j in after.items():
                self.energy[kind][name] = self.energy[kind].get(name, 0.0) + j - before[kind]
            peaks = self.peaks.setdefault(name, {})
            for key, value in self.memory.read().items():  # a stage entered twice keeps its larger peak
                peaks[key] = max(peaks.get(key, 0.0), value)

    def _start_poller(self) -> Callable[[], None]:
        if not self._polled:
            return lambda: None
        done = threading.Event()

        def loop() -> None:
            while not done.wait(self.poll_s):
                for s in self._polled:
                    try:
                        s.poll()
                    except Exception:  # a failed sample is skipped; the next read integrates over the gap
                        pass

        thread = threading.Thread(target=loop, name="winnow-meter", daemon=True)
        thread.start()

        def stop() -> None:
            done.set()
            thread.join()

        return stop

    def add(self, name: str, seconds: float, from_stage: str | None = None) -> None:
        """Book `seconds` to `name`. With `from_stage`, the time was measured inside that stage (evaluation
        inside training): it is moved out of it, with the same share of that stage's energy."""
        if from_stage is not None:
            share = seconds / self.seconds[from_stage] if self.seconds[from_stage] > 0 else 0.0
            self.seconds[from_stage] -= seconds
            for per_stage in self.energy.values():
                if from_stage in per_stage:
                    moved = per_stage[from_stage] * share
                    per_stage[from_stage] -= moved
                    per_stage[name] = per_stage.get(name, 0.0) + moved
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def stage_energy_j(self, name: str) -> dict[str, float]:
        """Joules of stage `name` per available source kind ({"cpu": ..., "gpu": ...})."""
        return {k: self.energy[k].get(name, 0.0) for k, s in self.sources.items() if s is not None}

    def charge(self, name: str, seconds: float, energy_j: dict[str, float]) -> None:
        """Book a cost that was paid earlier, elsewhere (a cached probe), as stage `name`: the run is charged
        what it would have cost on its own. Energy of a kind this meter cannot measure is left out."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        for kind, j in energy_j.items():
            if self.sources.get(kind) is not None:
                self.energy[kind][name] = self.energy[kind].get(name, 0.0) + j

    def totals(self) -> dict[str, float]:
        """`<stage>_s`, `<stage>_energy_j` (available sources summed; NaN if none), `total_s`, `total_energy_j`,
        `total_gpu_energy_j`, `total_cpu_energy_j` (NaN where that source is unavailable); `<stage>_peak_rss_bytes`
        and `peak_rss_bytes` (the largest over stages), likewise `peak_gpu_bytes` / `peak_gpu_reserved_bytes` on
        CUDA."""
        out: dict[str, float] = {}
        available = [k for k, s in self.sources.items() if s is not None]
        for name, seconds in self.seconds.items():
            out[f"{name}_s"] = seconds
            out[f"{name}_energy_j"] = sum(self.energy[k].get(name, 0.0) for k in available) if available else NAN
        out["total_s"] = sum(self.seconds.values())
        for kind in ("gpu", "cpu"):
            out[f"total_{kind}_energy_j"] = sum(self.energy[kind].values()) if kind in available else NAN
        out["total_energy_j"] = sum(out[f"total_{k}_energy_j"] for k in available) if available else NAN
        for name, peaks in self.peaks.items():
            for key, value in peaks.items():
                out[f"{name}_{key}"] = value
                out[key] = max(out.get(key, 0.0), value)
        return out

    def tags(self) -> dict[str, str]:
        """`energy_source_gpu` / `energy_source_cpu` (nvml, rapl, estimate, unavailable), `energy_includes`
        (what total_energy_j sums) and `energy_note` (how each was measured or why it fell back)."""
        labels = {k: s.label if s is not None else "unavailable" for k, s in self.sources.items()}
        included = [f"{k}:{labels[k]}" for k in ("gpu", "cpu") if self.sources[k] is not None]
        tags = {
            "energy_source_gpu": labels["gpu"],
            "energy_source_cpu": labels["cpu"],
            "energy_includes": "+".join(included) or "none",
            "energy_note": " | ".join(f"{k}: {n}" for k, n in self.notes.items() if n)[:4000],
        }
        if self.memory.note:
            tags["memory_note"] = self.memory.note
        return tags


class NullMeter:
    """The same interface, measuring nothing: the baseline of scripts/bench_meters.py."""

    n_gpus = 0

    def __init__(self, device: torch.device | str = "cpu", **_: object) -> None:
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def add(self, name: str, seconds: float, from_stage: str | None = None) -> None:
        pass

    def stage_energy_j(self, name: str) -> dict[str, float]:
        return {}

    def charge(self, name: str, seconds: float, energy_j: dict[str, float]) -> None:
        pass

    def energy_j(self) -> float:
        return NAN

    def totals(self) -> dict[str, float]:
        return {"total_s": NAN}  # cost_figures reads it

    def tags(self) -> dict[str, str]:
        return {}


def cost_figures(totals: dict[str, float], n_gpus: int, co2e_g_per_kwh: float, usd_per_gpu_hour: float,
                 usd_per_cpu_core_hour: float, cpu_cores: int | None = None) -> dict[str, float]:
    """Derived figures from `Meter.totals()`: `gpu_hours` (visible GPUs x wall seconds / 3600; 0 for a trial that
    used no GPU, a true zero), `cpu_core_hours` (cores the process may run on x wall seconds / 3600: what a
    rented machine bills), `energy_kwh`, `co2e_g` and `cost_usd` (NaN where energy is unavailable)."""
    cores = cpu_cores if cpu_cores is not None else len(os.sched_getaffinity(0))
    gpu_hours = n_gpus * totals["total_s"] / 3600
    cpu_core_hours = cores * totals["total_s"] / 3600
    energy_kwh = totals.get("total_energy_j", NAN) / 3.6e6
    return {
        "gpu_hours": gpu_hours,
        "cpu_core_hours": cpu_core_hours,
        "energy_kwh": energy_kwh,
        "co2e_g": energy_kwh * co2e_g_per_kwh,
        "cost_usd": gpu_hours * usd_per_gpu_hour + cpu_core_hours * usd_per_cpu_core_hour,
    }
