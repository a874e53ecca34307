"""FlashSigmoid (Triton) against FlashAttention-2 softmax attention (SDPA flash backend) on a GPU.

1. Correctness on the GPU: forward and dQ/dK/dV of the kernels against the float64 PyTorch
   reference (bf16 and fp32 inputs, head dims 64 and 128, causal and not, lengths with a partial
   last block, both dQ strategies of the backward). Timing only starts if every case passes.
2. Timing with CUDA events: warm-up calls (they also run the autotuner), then the median of many
   individually timed calls, of the forward and of forward+backward (both dQ strategies: a
   separate dQ kernel, or fp32 atomics in the dK/dV kernel), at sequence lengths 1k..16k, head
   dims 64 and 128, bf16, causal and not, against ``scaled_dot_product_attention`` restricted to
   the flash backend (softmax attention, FlashAttention-2; Dao 2023). Shapes follow the
   FlashAttention-2 paper: batch x length = 16k tokens, model width 2048 (heads = 2048 / head_dim).

FLOPs (the FlashAttention convention): forward 4·b·h·t²·k (two matmuls), halved when causal;
backward 2.5x the forward (five matmuls against two), so forward+backward is 3.5x. The count is
the same for sigmoid and softmax attention, so the TFLOP/s ratio is the speed ratio.

Targets (Ramapuram et al. 2025 report FlashSigmoid 17 % faster than FlashAttention-2 in the
forward on H100): forward >= 1.15x and forward+backward >= 1.0x SDPA at t >= 4k, head dim 128.

Without CUDA there is nothing to time: the script says so and runs a tiny correctness check of
the kernels through Triton's CPU interpreter instead.

Usage: python benchmarks/sigmoid_attention.py [--seq-lens 1024 4096] [--head-dims 128]
       python benchmarks/sigmoid_attention.py --plan   # print the shapes and FLOPs only
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
TOKENS = 16384
WIDTH = 2048
# Relative L2 error bounds for the correctness check (fp32 accumulation in every case).
REL_TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@dataclass(frozen=True, kw_only=True)
class CheckPlan:
    """The correctness cases: every combination of these is compared to the float64 reference."""

    dtypes: tuple[torch.dtype, ...]
    head_dims: tuple[int, ...]
    lengths: tuple[tuple[int, int], ...]  # (t_q, t_k)
    dq_modes: tuple[str, ...]
    batch: int = 2
    heads: int = 3


# On the GPU: partial last blocks at every block size tried, and keys past the last query.
GPU_CHECK = CheckPlan(dtypes=(torch.bfloat16, torch.float32), head_dims=HEAD_DIMS,
                      lengths=((1027, 1027), (300, 517)), dq_modes=("split", "atomic"))
# Under the CPU interpreter: a few seconds.
CPU_CHECK = CheckPlan(dtypes=(torch.float32, torch.bfloat16), head_dims=(32,),
                      lengths=((37, 37), (20, 45)), dq_modes=("split",), batch=1, heads=2)


@dataclass(frozen=True, kw_only=True)
class Shape:
    """One benchmark point."""

    batch: int
    heads: int
    seq_len: int
    head_dim: int
    causal: bool

    def fwd_flops(self) -> float:
        flops = 4.0 * self.batch * self.heads * self.seq_len**2 * self.head_dim
        return flops / 2 if self.causal else flops


def shapes(seq_lens: tuple[int, ...], head_dims: tuple[int, ...], tokens: int,
           width: int) -> list[Shape]:
    """The benchmark grid: constant tokens per batch and constant model width."""
    return [
        Shape(batch=max(1, tokens // t), heads=width // k, seq_len=t, head_dim=k, causal=causal)
        for k in head_dims
        for causal in (False, True)
        for t in seq_lens
    ]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


@contextlib.contextmanager
def dq_mode(mode: str) -> Iterator[None]:
    """Select the backward's dQ strategy (``kernels._flash_sigmoid_bwd.DQ_MODES``) for a block."""
    from kernels._flash_sigmoid_bwd import DQ_MODE_ENV

    old = os.environ.get(DQ_MODE_ENV)
    os.environ[DQ_MODE_ENV] = mode
    try:
        yield
    finally:
        if old is None:
            del os.environ[DQ_MODE_ENV]
        else:
            os.environ[DQ_MODE_ENV] = old


def check_correctness(device: str, plan: CheckPlan) -> bool:
    """Kernels against the float64 reference; prints a Markdown table, returns all-passed."""
    from kernels import sigmoid_attention, sigmoid_attention_reference

    print("## Correctness against the float64 reference (relative L2 error)\n")
    print("| dtype | t_q | t_k | k | causal | dQ | out | dq | dk | dv | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    all_ok = True
    gen = torch.Generator(device=device).manual_seed(0)

    def draw(t: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
        x = torch.randn(plan.batch, plan.heads, t, head_dim, device=device, dtype=torch.float64,
                        generator=gen)
        return x.to(dtype).requires_grad_()

    for dtype, head_dim, causal, (t_q, t_k), mode in itertools.product(
        plan.dtypes, plan.head_dims, (False, True), plan.lengths, plan.dq_modes
    ):
        q, k, v = (draw(t, head_dim, dtype) for t in (t_q, t_k, t_k))
        do = draw(t_q, head_dim, dtype).detach()
        with dq_mode(mode):
            o = sigmoid_attention(q, k, v, causal=causal, impl="triton")
            grads = torch.autograd.grad(o, (q, k, v), do)
        refs_in = [x.detach().double().requires_grad_() for x in (q, k, v)]
        o_ref = sigmoid_attention_reference(*refs_in, causal=causal)
        grads_ref = torch.autograd.grad(o_ref, refs_in, do.double())
        errs = [_rel_err(a, b) for a, b in zip((o, *grads), (o_ref, *grads_ref), strict=True)]
        ok = all(math.isfinite(e) and e < REL_TOL[dtype] for e in errs)
        all_ok &= ok
        cells = " | ".join(f"{e:.1e}" for e in errs)
        name = str(dtype).removeprefix("torch.")
        print(f"| {name} | {t_q} | {t_k} | {head_dim} | {causal} | {mode} | {cells} | "
              f"{'yes' if ok else 'NO'} |", flush=True)
    print()
    return all_ok


def time_ms(fn: Callable[[], object], *, warmup: int, reps: int,
            grads: tuple[torch.Tensor, ...] = ()) -> float:
    """Median milliseconds of ``fn`` over ``reps`` calls, each timed with its own CUDA events.

    The warm-up calls compile and autotune the kernels and are not timed. ``grads`` are set to
    None before each call, so a backward never pays for accumulating into an existing gradient.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for start, end in events:
        for x in grads:
            x.grad = None
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def benchmark(shape: Shape, device: str, *, warmup: int, reps: int) -> dict[str, float]:
    """Median milliseconds of each pass (see ``PASSES``) for both implementations."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    from kernels import sigmoid_attention

    size = (shape.batch, shape.heads, shape.seq_len, shape.head_dim)
    q, k, v = (torch.randn(size, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    do = torch.randn(size, device=device, dtype=torch.bfloat16)

    def sigmoid_fwd() -> torch.Tensor:
        return sigmoid_attention(q, k, v, causal=shape.causal, impl="triton")

    def softmax_fwd() -> torch.Tensor:
        return scaled_dot_product_attention(q, k, v, is_causal=shape.causal)

    def fwd_bwd(fwd: Callable[[], torch.Tensor]) -> Callable[[], None]:
        return lambda: fwd().backward(do)

    def timed(fn: Callable[[], object], grads: tuple[torch.Tensor, ...] = ()) -> float:
        return time_ms(fn, warmup=warmup, reps=reps, grads=grads)

    times = {}
    with torch.no_grad():
        times["sigmoid_fwd"] = timed(sigmoid_fwd)
    for mode in ("split", "atomic"):
        with dq_mode(mode):
            times[f"sigmoid_fwdbwd_{mode}"] = timed(fwd_bwd(sigmoid_fwd), grads=(q, k, v))
    # Only the flash backend: SDPA raises instead of falling back to another one.
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        with torch.no_grad():
            times["sdpa_fwd"] = timed(softmax_fwd)
        times["sdpa_fwdbwd"] = timed(fwd_bwd(softmax_fwd), grads=(q, k, v))
    return times


# (label, FlashSigmoid timing, SDPA timing, FLOPs as a multiple of the forward's)
PASSES = (
    ("fwd", "sigmoid_fwd", "sdpa_fwd", 1.0),
    ("fwd+bwd, dQ split", "sigmoid_fwdbwd_split", "sdpa_fwdbwd", 3.5),
    ("fwd+bwd, dQ atomic", "sigmoid_fwdbwd_atomic", "sdpa_fwdbwd", 3.5),
)


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def print_table(results: list[tuple[Shape, dict[str, float]]], *, reps: int) -> None:
    """Markdown table: milliseconds and TFLOP/s of both implementations, and their ratio."""
    print(f"## Speed (bf16; median of {reps} calls timed with CUDA events)\n")
    print("| t | k | b x h | causal | pass | FlashSigmoid ms | TFLOP/s | SDPA flash ms | TFLOP/s "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, t in results:
        for label, sigmoid_key, sdpa_key, factor in PASSES:
            flops = factor * shape.fwd_flops()
            sig, ref = t[sigmoid_key], t[sdpa_key]
            print(f"| {shape.seq_len} | {shape.head_dim} | {shape.batch}x{shape.heads} | "
                  f"{shape.causal} | {label} | {sig:.3f} | {tflops(flops, sig):.0f} | "
                  f"{ref:.3f} | {tflops(flops, ref):.0f} | {ref / sig:.2f}x |")
    print("\nratio = SDPA time / FlashSigmoid time (> 1: FlashSigmoid faster). Targets: fwd >= "
          "1.15x, fwd+bwd >= 1.0x at t >= 4k, k = 128.")


def environment() -> str:
    """GPU, library versions and the CUDA that torch was built with, to record with the numbers."""
    import triton

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    return (f"{gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}), triton "
            f"{triton.__version__}, Python {platform.python_version()}")


def cpu_check() -> int:
    """Without CUDA: say so, then check the kernels on tiny shapes under Triton's interpreter."""
    print("No CUDA device: GPU timing needs CUDA, so nothing is timed here.\n"
          "Running a tiny correctness check of the kernels under Triton's CPU interpreter "
          "instead (TRITON_INTERPRET=1; it proves the maths, not GPU speed).\n", flush=True)
    # The interpreter is chosen when the kernels are defined: set it before importing them.
    os.environ["TRITON_INTERPRET"] = "1"
    if "kernels._flash_sigmoid_fwd" in sys.modules:
        print("kernels were imported before TRITON_INTERPRET was set: run this script directly.",
              file=sys.stderr)
        return 1
    ok = check_correctness("cpu", CPU_CHECK)
    print("CPU interpreter check passed." if ok else "CPU interpreter check FAILED.")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=list(SEQ_LENS))
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--tokens", type=int, default=TOKENS, help="batch x sequence length")
    parser.add_argument("--width", type=int, default=WIDTH, help="heads x head dim")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per measurement")
    parser.add_argument("--reps", type=int, default=50, help="timed calls per measurement")
    parser.add_argument("--plan", action="store_true", help="print the shapes and exit")
    parser.add_argument("--skip-check", action="store_true", help="skip the correctness check")
    args = parser.parse_args(argv)

    grid = shapes(tuple(args.seq_lens), tuple(args.head_dims), args.tokens, args.width)
    if args.plan:
        for s in grid:
            print(f"b={s.batch} h={s.heads} t={s.seq_len} k={s.head_dim} causal={s.causal} "
                  f"fwd={s.fwd_flops() / 1e12:.3f} TFLOP")
        return 0
    if not torch.cuda.is_available():
        return cpu_check()

    device = "cuda"
    print(f"# FlashSigmoid vs SDPA flash\n\n{environment()}\n")
    if not args.skip_check and not check_correctness(device, GPU_CHECK):
        print("Correctness check failed: not timing.", file=sys.stderr)
        return 1
    results = []
    for s in grid:
        results.append((s, benchmark(s, device, warmup=args.warmup, reps=args.reps)))
        torch.cuda.empty_cache()
    print_table(results, reps=args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
