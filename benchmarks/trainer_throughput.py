"""Training throughput of ``DenseTrainer`` against a bare PyTorch loop on the same model.

Both sides train the same GPT (the shape the rule gives the target N), with the same batch,
sequence length, AdamW settings and gradient clipping, on windows of the same text, in this one
process. The bare loop is what one would write by hand: sample, forward, backward, clip, step,
with no schedule, no metric logging and no evaluation.

Throughput is measured between the first and the last logged step (``log_every`` apart), so
model construction, the first step's warm-up and the final evaluation are excluded on both sides;
the trainer is timed through the metric sink it is given. Two clocks are read: wall time, and the
process's CPU time, which other processes on a shared machine disturb far less. Runs alternate
(trainer first, then bare first) and the best of the repeats is reported. The end-to-end figure
(the run's tokens over its whole ``wall_time_s``, with set-up and evaluation) is shown as well.

Usage: ``python benchmarks/trainer_throughput.py [--n-params 1e5] [--steps 60] [--repeats 4]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import replace

import torch

from trainers.base import RunPoint, RunSpec
from trainers.config import TrainerConfig
from trainers.data import load_domains
from trainers.dense import DenseTrainer, build_optimizer, plan_dense
from trainers.model import GPT, lm_loss


class ClockSink:
    """Records (step, wall seconds, CPU seconds) at every logged training step."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, float, float]] = []

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        if "train_loss" in metrics:
            self.marks.append((step, time.perf_counter(), time.process_time()))

    def tokens_per_s(self, tokens_per_step: int) -> tuple[float, float]:
        """(wall, CPU) tokens per second between the first and the last mark."""
        (s0, w0, c0), (s1, w1, c1) = self.marks[0], self.marks[-1]
        tokens = (s1 - s0) * tokens_per_step
        return tokens / (w1 - w0), tokens / (c1 - c0)


def bare_loop(config: TrainerConfig, point: RunPoint, seed: int) -> tuple[float, float]:
    """(wall, CPU) tokens/s of a hand-written loop training the same model on the same text."""
    plan = plan_dense(point, config)
    assert plan.shape is not None
    stream = load_domains(config.data)["code"].train
    torch.manual_seed(seed)
    model = GPT(plan.shape, config.model)
    optimizer = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(seed)
    offsets_t = torch.arange(config.seq_len + 1)
    clock = ClockSink()
    for step in range(1, plan.steps + 1):
        starts_b = torch.randint(
            0, stream.numel() - config.seq_len, (config.batch_size,), generator=generator
        )
        window_bt = stream[starts_b[:, None] + offsets_t].long()
        loss = lm_loss(model(window_bt[:, :-1]), window_bt[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        if step % config.log_every == 0 or step == plan.steps:
            clock.log_metrics({"train_loss": loss.item()}, step=step)
    return clock.tokens_per_s(config.batch_size * config.seq_len)


def trainer(config: TrainerConfig, point: RunPoint, seed: int) -> tuple[float, float, float]:
    """(wall, CPU, end-to-end wall) tokens/s of ``DenseTrainer.train``."""
    spec = RunSpec(run_key="bench", study="bench", seed=seed, point=point, trainer=config)
    clock = ClockSink()
    result = DenseTrainer(config).train(spec, clock)
    wall, cpu = clock.tokens_per_s(config.batch_size * config.seq_len)
    return wall, cpu, result.plan.tokens / result.wall_time_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-params", type=float, default=1e5, help="target N (default 1e5)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = replace(
        TrainerConfig(),
        device="cpu",
        threads=args.threads,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        log_every=args.log_every,
    )
    point = RunPoint(
        n_params=int(args.n_params), tokens=args.steps * args.batch_size * args.seq_len
    )
    plan = plan_dense(point, config)
    load_domains(config.data)  # read the text once, outside every timing
    if args.steps <= args.log_every:
        parser.error(f"--steps must exceed --log-every ({args.log_every}) to time anything")
    warm_up = replace(point, tokens=(args.log_every + 1) * args.batch_size * args.seq_len)
    bare_loop(config, warm_up, seed=0)  # one-time imports and allocations

    runs: dict[str, list[tuple[float, ...]]] = {"trainer": [], "bare": []}
    for repeat in range(args.repeats):
        order = ("trainer", "bare") if repeat % 2 == 0 else ("bare", "trainer")
        for name in order:
            run = trainer if name == "trainer" else bare_loop
            runs[name].append(run(config, point, seed=repeat))

    best = {name: [max(col) for col in zip(*rows, strict=True)] for name, rows in runs.items()}
    (t_wall, t_cpu, t_e2e), (b_wall, b_cpu) = best["trainer"], best["bare"]
    shape = plan.shape
    assert shape is not None
    print(
        f"N = {plan.n_params:,} (d_model={shape.d_model}, n_layer={shape.n_layer}), "
        f"seq_len {args.seq_len}, batch {args.batch_size}, {plan.steps} steps, "
        f"{args.threads} thread(s), best of {args.repeats}; torch {torch.__version__}, "
        f"{platform.machine()} with {os.cpu_count()} CPUs\n"
    )
    print("| loop | tokens/s (wall) | tokens/s (CPU time) | ratio (wall) | ratio (CPU) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| bare PyTorch | {b_wall:,.0f} | {b_cpu:,.0f} | 1.000 | 1.000 |")
    print(
        f"| DenseTrainer | {t_wall:,.0f} | {t_cpu:,.0f} | "
        f"{t_wall / b_wall:.3f} | {t_cpu / b_cpu:.3f} |"
    )
    print(
        f"| DenseTrainer end to end (set-up and eval) | {t_e2e:,.0f} | | {t_e2e / b_wall:.3f} | |"
    )


if __name__ == "__main__":
    main()
