"""The two MoE expert dispatches of ``trainers.moe``: grouped matmuls against the split loop.

Three measurements, one thread, on CPU:

1. One ``MoE`` layer, forward and backward of 16 x 128 tokens, for several widths, expert counts
   and top-k: tokens per CPU second with the grouped matmuls (``F.grouped_mm``, no host read,
   no loop over experts) and with the split into E slices (``split(counts.tolist())`` and a
   loop over experts), alternating, best of the repeats; and the largest difference of either
   from the dense reference ``moe_reference``.
2. Whole ``MoETrainer`` runs (sampler, AdamW, logging), timed between the first and the last
   logged step through the metric sink, with each dispatch; their final losses side by side.
3. ``torch._dynamo.explain`` of one layer: graphs and graph breaks of the split path (float32)
   and of the grouped path (bfloat16; torch's grouped matmul traces only in bfloat16).

Usage: ``python benchmarks/moe_dispatch.py [--repeats 6] [--steps 40]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch._dynamo

import trainers.moe
from trainers.base import RunPoint, RunSpec
from trainers.config import MoEConfig, TrainerConfig
from trainers.data import load_domains
from trainers.moe import MoE, moe_reference
from trainers.sparse import MoETrainer

DISPATCHES = ("split", "grouped")
TOKENS = (16, 128)  # batch x seq_len of every measurement


@contextmanager
def dispatch(name: str) -> Iterator[None]:
    """Force one dispatch: ``grouped`` where ``trainers.moe`` allows it, or ``split``."""
    real = trainers.moe.grouped_dispatch
    if name == "split":
        trainers.moe.grouped_dispatch = lambda x_ad, weight_edf: False
    try:
        yield
    finally:
        trainers.moe.grouped_dispatch = real


def layer_seconds(moe: MoE, x_btd: torch.Tensor, iters: int = 5) -> float:
    """CPU seconds of one forward and backward pass (the loss includes the aux loss)."""
    started = time.process_time()
    for _ in range(iters):
        y_btd = moe(x_btd)
        (y_btd.square().sum() + moe.aux_loss).backward()
    return (time.process_time() - started) / iters


def bench_layers(repeats: int) -> None:
    print("| d_model | E | K | split tokens/s | grouped tokens/s | grouped / split | max diff to reference (split, grouped) |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for d, experts, top_k in ((64, 4, 1), (64, 4, 2), (64, 8, 2), (128, 8, 1), (128, 8, 2), (256, 8, 2)):
        torch.manual_seed(0)
        moe = MoE(d, 4 * d, experts, top_k, std=0.02, out_std=0.02)
        x_btd = torch.randn(*TOKENS, d, requires_grad=True)
        reference = moe_reference(moe, x_btd)
        diffs, best = {}, dict.fromkeys(DISPATCHES, float("inf"))
        for name in DISPATCHES:
            with dispatch(name):
                diffs[name] = (moe(x_btd) - reference).abs().max().item()
                layer_seconds(moe, x_btd, iters=2)  # warm-up
        for repeat in range(repeats):
            for name in DISPATCHES if repeat % 2 == 0 else DISPATCHES[::-1]:
                with dispatch(name):
                    best[name] = min(best[name], layer_seconds(moe, x_btd))
        tokens = TOKENS[0] * TOKENS[1]
        split, grouped = tokens / best["split"], tokens / best["grouped"]
        print(
            f"| {d} | {experts} | {top_k} | {split:,.0f} | {grouped:,.0f} | {grouped / split:.2f} | "
            f"{diffs['split']:.1e}, {diffs['grouped']:.1e} |"
        )


class ClockSink:
    """(step, CPU seconds) at every logged training step."""

    def __init__(self) -> None:
        self.marks: list[tuple[int, float]] = []

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        if "train_loss" in metrics:
            self.marks.append((step, time.process_time()))


def bench_trainer(repeats: int, steps: int) -> None:
    load_domains(TrainerConfig().data)  # read the text once, outside every timing
    print("| N (shape) | E | K | split tokens/s | grouped tokens/s | grouped / split | final loss (split, grouped) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for n_params, experts, sparsity in ((100_000, 4, 0.5), (100_000, 8, 0.75), (1_000_000, 8, 0.75)):
        config = TrainerConfig(
            kind="moe", device="cpu", seq_len=TOKENS[1], batch_size=TOKENS[0], log_every=10,
            moe=MoEConfig(experts=experts),
        )
        point = RunPoint(n_params=n_params, tokens=steps * TOKENS[0] * TOKENS[1], sparsity=sparsity)
        spec = RunSpec(run_key="bench", study="bench", seed=0, point=point, trainer=config)
        best, loss = dict.fromkeys(DISPATCHES, 0.0), {}
        for repeat in range(repeats):
            for name in DISPATCHES if repeat % 2 == 0 else DISPATCHES[::-1]:
                clock = ClockSink()
                with dispatch(name):
                    result = MoETrainer(config).train(spec, clock)
                (s0, c0), (s1, c1) = clock.marks[0], clock.marks[-1]
                best[name] = max(best[name], (s1 - s0) * TOKENS[0] * TOKENS[1] / (c1 - c0))
                loss[name] = result.final_loss
        shape = result.plan.shape
        assert shape is not None
        print(
            f"| {result.plan.n_params:,} (d {shape.d_model}, {shape.n_layer} layers) | {experts} | "
            f"{shape.top_k} | {best['split']:,.0f} | {best['grouped']:,.0f} | "
            f"{best['grouped'] / best['split']:.2f} | {loss['split']:.6f}, {loss['grouped']:.6f} |"
        )


def bench_graphs() -> None:
    print("| dispatch | dtype | graphs | graph breaks | reasons |")
    print("|---|---|---:|---:|---|")
    for name, dtype in (("split", torch.float32), ("grouped", torch.bfloat16)):
        torch._dynamo.reset()
        moe = MoE(64, 256, 4, 2, std=0.02, out_std=0.02).to(dtype)
        x_btd = torch.randn(4, 64, 64, dtype=dtype)
        real = trainers.moe.grouped_dispatch
        # in bfloat16 the grouped path is asked for explicitly (the trainer uses it in float32)
        trainers.moe.grouped_dispatch = (lambda x_ad, w: False) if name == "split" else (lambda x_ad, w: True)
        try:
            explained = torch._dynamo.explain(moe)(x_btd)
        finally:
            trainers.moe.grouped_dispatch = real
        reasons = sorted({str(b.reason).splitlines()[0] for b in explained.break_reasons})
        print(f"| {name} | {dtype} | {explained.graph_count} | {explained.graph_break_count} | {'; '.join(reasons)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.machine()} with {os.cpu_count()} CPUs, 1 thread\n")
    bench_layers(args.repeats)
    print()
    bench_trainer(max(1, args.repeats // 2), args.steps)
    print()
    bench_graphs()


if __name__ == "__main__":
    main()
