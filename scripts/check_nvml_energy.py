"""GPU energy two ways on one load: NVML's energy counter against integrated power samples (goal: within 5%).

Runs a steady matmul load on GPU 0 for `--seconds` (30) while both `NvmlEnergy` readers of harness/meters.py
watch the same GPU: the counter (nvmlDeviceGetTotalEnergyConsumption) and power sampling
(nvmlDeviceGetPowerUsage every `--poll-s`, trapezoids). Prints the GPU model, both figures and their ratio.
Exits 2 with a message where there is no CUDA GPU or NVML, or the GPU has no energy counter (pre-Volta).

    python scripts/check_nvml_energy.py [--seconds 30] [--poll-s 0.1]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import torch

from harness.meters import NvmlEnergy, nvml_handles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--poll-s", type=float, default=0.1)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("check_nvml_energy: no CUDA GPU visible; nothing to compare (run it on a GPU machine)")
        return 2
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = nvml_handles(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"))[0]
    except Exception as e:
        print(f"check_nvml_energy: NVML unavailable ({type(e).__name__}: {e})")
        return 2
    name = pynvml.nvmlDeviceGetName(handle)
    counter = NvmlEnergy(pynvml, [handle])
    if not counter.counter:
        print(f"check_nvml_energy: {name} has no energy counter (pre-Volta); only power sampling is possible")
        return 2
    sampler = NvmlEnergy(pynvml, [handle])
    sampler.counter = False  # the same GPU read the other way
    sampler.last_t, sampler.last_w, sampler.total_j = time.perf_counter(), sampler._watts(), 0.0

    done = threading.Event()

    def poll() -> None:
        while not done.wait(args.poll_s):
            sampler.poll()

    a = torch.randn(8192, 8192, device="cuda")
    torch.cuda.synchronize()
    thread = threading.Thread(target=poll, daemon=True)
    start_counter_j, start_sampled_j = counter.read_j(), sampler.read_j()
    start = time.perf_counter()
    thread.start()
    while time.perf_counter() - start < args.seconds:
        for _ in range(10):
            a = torch.tanh(a @ a) * 0.01 + a
        torch.cuda.synchronize()
    done.set()
    thread.join()
    counter_j, sampled_j = counter.read_j() - start_counter_j, sampler.read_j() - start_sampled_j
    wall_s = time.perf_counter() - start
    print(f"GPU: {name}, driver {pynvml.nvmlSystemGetDriverVersion()}, torch {torch.__version__}")
    print(f"load: {wall_s:.1f} s of 8192^2 float32 matmuls; power sampled every {args.poll_s} s")
    print(f"counter {counter_j:.1f} J ({counter_j / wall_s:.1f} W mean), sampled {sampled_j:.1f} J "
          f"({sampled_j / wall_s:.1f} W mean), ratio sampled/counter {sampled_j / counter_j:.4f} (goal within 5%)")
    return 0 if abs(sampled_j / counter_j - 1) <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
