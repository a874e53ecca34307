"""FlashSigmoid (Triton) against FlashAttention-2 softmax attention (SDPA flash backend) on a GPU.

1. Correctness on the GPU: forward and dQ/dK/dV of the kernels against the float64 PyTorch
   reference (bf16 and fp32 inputs, causal and not, a length with a partial last block).
2. Timing with CUDA events through ``triton.testing.do_bench`` (median after warm-up) of the
   forward and of forward+backward (both dQ strategies of the backward: a separate dQ kernel, or
   fp32 atomics in the dK/dV kernel), at sequence lengths 1k..16k, head dims 64 and 128, bf16,
   causal and not, against ``scaled_dot_product_attention`` restricted to the flash backend.
   Shapes follow the FlashAttention-2 paper (Dao, 2023): batch x length = 16k tokens, model width
   2048 (heads = 2048 / head_dim).

FLOPs (the FlashAttention convention): forward 4·b·h·t²·k (two matmuls), halved when causal;
backward 2.5x the forward (five matmuls against two), so forward+backward is 3.5x. The count is
the same for sigmoid and softmax attention, so the TFLOP/s ratio is the speed ratio.

Targets (Ramapuram et al., ICLR 2025, report FlashSigmoid 17 % faster forward on H100):
forward >= 1.15x and forward+backward >= 1.0x SDPA at t >= 4k, head dim 128.

Usage: python benchmarks/sigmoid_attention.py [--seq-lens 1024 4096] [--head-dims 128]
       python benchmarks/sigmoid_attention.py --plan   # print the shapes; needs no GPU
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
TOKENS = 16384
WIDTH = 2048
# Relative-error bounds for the GPU correctness check (fp32 accumulation in both cases).
REL_TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}
# (t_q, t_k) for the correctness check: partial last blocks, and keys past the last query.
CHECK_LENGTHS = ((1027, 1027), (300, 517))


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


def check_correctness(device: str) -> bool:
    """Kernels against the float64 reference on the GPU; prints a table, returns all-passed."""
    from kernels import sigmoid_attention, sigmoid_attention_reference
    from kernels._flash_sigmoid_bwd import DQ_MODES

    print("## Correctness against the float64 reference (relative L2 error)\n")
    print("| dtype | t_q | t_k | k | causal | dQ | out | dq | dk | dv | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    all_ok = True
    gen = torch.Generator(device=device).manual_seed(0)

    def draw(t: int, head_dim: int, dtype: torch.dtype) -> torch.Tensor:
        x = torch.randn(2, 3, t, head_dim, device=device, dtype=torch.float64, generator=gen)
        return x.to(dtype).requires_grad_()

    for dtype, head_dim, causal, (t_q, t_k), mode in itertools.product(
        (torch.bfloat16, torch.float32), HEAD_DIMS, (False, True), CHECK_LENGTHS, DQ_MODES
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
              f"{'yes' if ok else 'NO'} |")
    print()
    return all_ok


def _time_ms(fn: Callable[[], object], grads: list[torch.Tensor] | None = None) -> float:
    import triton.testing

    fn()  # compile and autotune outside the timed region
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grads,
                                         return_mode="median"))


def benchmark(shape: Shape, device: str) -> dict[str, float]:
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
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return scaled_dot_product_attention(q, k, v, is_causal=shape.causal)

    def fwd_bwd(fwd: Callable[[], torch.Tensor]) -> Callable[[], None]:
        return lambda: fwd().backward(do)

    times = {}
    with torch.no_grad():
        times["sigmoid_fwd"] = _time_ms(sigmoid_fwd)
        times["sdpa_fwd"] = _time_ms(softmax_fwd)
    for mode in ("split", "atomic"):
        with dq_mode(mode):
            times[f"sigmoid_fwdbwd_{mode}"] = _time_ms(fwd_bwd(sigmoid_fwd), grads=[q, k, v])
    times["sdpa_fwdbwd"] = _time_ms(fwd_bwd(softmax_fwd), grads=[q, k, v])
    return times


# (label, FlashSigmoid timing, SDPA timing, FLOPs as a multiple of the forward's)
PASSES = (
    ("fwd", "sigmoid_fwd", "sdpa_fwd", 1.0),
    ("fwd+bwd, dQ split", "sigmoid_fwdbwd_split", "sdpa_fwdbwd", 3.5),
    ("fwd+bwd, dQ atomic", "sigmoid_fwdbwd_atomic", "sdpa_fwdbwd", 3.5),
)


def _tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def print_table(results: list[tuple[Shape, dict[str, float]]]) -> None:
    """Markdown table: TFLOP/s of both implementations and their ratio."""
    print("## Speed (bf16; TFLOP/s, median of do_bench)\n")
    print("| t | k | b x h | causal | pass | FlashSigmoid ms | TFLOP/s | SDPA flash ms | TFLOP/s "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, t in results:
        for label, sigmoid_key, sdpa_key, factor in PASSES:
            flops = factor * shape.fwd_flops()
            sig, ref = t[sigmoid_key], t[sdpa_key]
            print(f"| {shape.seq_len} | {shape.head_dim} | {shape.batch}x{shape.heads} | "
                  f"{shape.causal} | {label} | {sig:.3f} | {_tflops(flops, sig):.0f} | "
                  f"{ref:.3f} | {_tflops(flops, ref):.0f} | {ref / sig:.2f}x |")
    print("\nratio = SDPA time / FlashSigmoid time (> 1: FlashSigmoid faster). Targets: fwd >= "
          "1.15x, fwd+bwd >= 1.0x at t >= 4k, k = 128.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=list(SEQ_LENS))
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--tokens", type=int, default=TOKENS, help="batch x sequence length")
    parser.add_argument("--width", type=int, default=WIDTH, help="heads x head dim")
    parser.add_argument("--plan", action="store_true", help="print the shapes and exit")
    parser.add_argument("--skip-check", action="store_true", help="skip the correctness check")
    args = parser.parse_args(argv)

    grid = shapes(tuple(args.seq_lens), tuple(args.head_dims), args.tokens, args.width)
    if args.plan:
        for s in grid:
            print(f"b={s.batch} h={s.heads} t={s.seq_len} k={s.head_dim} causal={s.causal} "
                  f"fwd={s.fwd_flops() / 1e12:.2f} TFLOP")
        return 0
    if not torch.cuda.is_available():
        print("No CUDA device: this benchmark times GPU kernels and has nothing to run here. "
              "The kernels' CPU checks are `pytest tests/kernels` (Triton interpreter); "
              "`--plan` prints the benchmark shapes.", file=sys.stderr)
        return 1

    device = "cuda"
    print(f"# FlashSigmoid vs SDPA flash on {torch.cuda.get_device_name()}\n")
    if not args.skip_check and not check_correctness(device):
        print("Correctness check failed: not timing.", file=sys.stderr)
        return 1
    results = []
    for s in grid:
        results.append((s, benchmark(s, device)))
        torch.cuda.empty_cache()
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
