"""Peak memory of real runs against the budget ``trainers.memory`` states for their size.

Each case trains a few steps of a real run (``DenseTrainer`` or ``MoETrainer``, the study's code
path, held-out evaluation included) in a fresh Python process. On CPU the process's resident set
is sampled every 2 ms from ``/proc/self/statm`` while the run trains; the peak minus the resident
set just before the run (after imports and data loading) is the run's own peak. On CUDA the
allocator's ``max_memory_allocated`` is used instead. The baseline is the estimate itself: the
table gives measured / estimate and whether the peak stayed within the budget (estimate x 1.5).

Usage: ``python benchmarks/memory.py [--cases small|all]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (label, trainer kind, target N, batch size, sequence length, extra trainer options)
CASES = [
    ("dense 1e5", "dense", 1e5, 16, 128, {}),
    ("dense 1e6", "dense", 1e6, 16, 128, {}),
    ("dense 1e6, batch 64 x 256", "dense", 1e6, 64, 256, {}),
    ("dense 1e7", "dense", 1e7, 16, 128, {}),
    ("dense 1e7 + EMA + sigmaReparam", "dense", 1e7, 16, 128, {"ema": True, "sigma": True}),
    ("dense 3e7", "dense", 3e7, 16, 128, {}),
    ("moe 1e6 (E=8, K=2)", "moe", 1e6, 16, 128, {}),
    ("moe 1e7 (E=8, K=2)", "moe", 1e7, 16, 128, {}),
]

CHILD = r"""
import json, os, sys, threading, time
from dataclasses import replace
import torch
from trainers import get_trainer
from trainers.base import NullSink, RunPoint, RunSpec
from trainers.config import ModelConfig, MoEConfig, OptimConfig, TrainerConfig
from trainers.data import load_domains
from trainers.memory import estimate_memory

kind, n, batch, seq, extra = json.loads(sys.argv[1])
device = "cuda" if torch.cuda.is_available() else "cpu"
config = TrainerConfig(kind=kind, batch_size=batch, seq_len=seq, log_every=1, device=device, threads=1,
                       model=ModelConfig(sigma_reparam=bool(extra.get("sigma"))),
                       optim=OptimConfig(ema=0.99 if extra.get("ema") else 0.0),
                       moe=MoEConfig(experts=8))
config = replace(config, data=replace(config.data, eval_tokens=2048))
steps = 3
point = RunPoint(n_params=int(n), tokens=steps * batch * seq, sparsity=0.75 if kind == "moe" else 0.0)
trainer = get_trainer(config)
plan = trainer.plan(point)
estimate = estimate_memory(plan, config)
load_domains(config.data)
page = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page

peak = [0]
done = threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

spec = RunSpec(run_key="memory", study="bench", seed=0, point=point, trainer=config)
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    trainer.train(spec, NullSink())
    measured = torch.cuda.max_memory_allocated() - base
else:
    import gc; gc.collect()
    base = rss()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    trainer.train(spec, NullSink())
    done.set(); thread.join()
    measured = max(peak[0], rss()) - base
print(json.dumps({"n_params": plan.n_params, "estimate": estimate.total, "budget": estimate.budget,
                  "measured": measured, "device": device}))
"""


def run_case(kind: str, n: float, batch: int, seq: int, extra: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([kind, n, batch, seq, extra])],
        capture_output=True, text=True, check=True, env=env, cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", choices=["small", "all"], default="all")
    args = parser.parse_args()
    cases = CASES if args.cases == "all" else CASES[:3]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'case':34} {'N':>9} {'estimate MB':>12} {'budget MB':>10} {'measured MB':>12} {'meas/est':>9}  within")
    for label, kind, n, batch, seq, extra in cases:
        r = run_case(kind, n, batch, seq, extra)
        mb = 1 / 2**20
        ratio = r["measured"] / r["estimate"]
        within = "yes" if r["measured"] <= r["budget"] else "NO"
        print(
            f"{label:34} {r['n_params']:9.3g} {r['estimate'] * mb:12.1f} {r['budget'] * mb:10.1f} "
            f"{r['measured'] * mb:12.1f} {ratio:9.2f}  {within} ({r['device']})"
        )


if __name__ == "__main__":
    main()
