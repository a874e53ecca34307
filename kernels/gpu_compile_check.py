"""Compile the FlashSigmoid kernels for an NVIDIA GPU target on a machine without a GPU.

Triton's CPU interpreter checks the kernels' arithmetic but never runs the GPU compiler, so code
that only the compiler rejects (an unsupported construct, too much shared memory for a block
configuration) would first show up on a GPU. Triton ships ``ptxas``, so the whole pipeline down
to a cubin runs without a device; this reports, per kernel and block configuration, the shared
memory, registers and spilled bytes, and fails if any configuration does not compile or needs
more shared memory than the target has.

Run with the interpreter off, in a fresh process (kernels must be defined for the GPU):

    TRITON_INTERPRET=0 python -m kernels.gpu_compile_check [--arch 90] [--head-dims 64 128]
        [--dtype bf16] [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import _flash_sigmoid_bwd as bwd
from kernels import _flash_sigmoid_fwd as fwd

# Largest dynamic shared memory per block (bytes): H100/H200 (sm_90) and A100 (sm_80).
SHARED_MEMORY_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
TRITON_TYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


@dataclass(frozen=True, kw_only=True)
class Compiled:
    """What the compiler reports for one kernel and block configuration."""

    kernel: str
    config: str
    shared_bytes: int
    registers: int | None
    spill_bytes: int | None


def _signature(fn: triton.JITFunction, dtype: str, constexprs: dict[str, object]) -> dict[str, str]:
    """Argument types by the kernels' naming convention: pointers are upper case, ``sig_*`` and
    ``sm_scale`` fp32, the rest (strides, lengths) int32; ``DQ_ACC`` is the fp32 dQ buffer."""
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "DQ_ACC":
            signature[name] = "*fp32"
        elif name[0].isupper():
            signature[name] = f"*{TRITON_TYPES[dtype]}"
        elif name.startswith("sig_") or name == "sm_scale":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    return signature


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, stack bytes) from ``cuobjdump --dump-resource-usage``; stack = spills."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=False).stdout
    regs, stack = re.search(r"REG:(\d+)", out), re.search(r"STACK:(\d+)", out)
    return (int(regs.group(1)) if regs else None, int(stack.group(1)) if stack else None)


def _variants(
    head_dims: tuple[int, ...], dtype: str, quick: bool
) -> Iterator[tuple[str, triton.JITFunction, dict[str, object], triton.Config]]:
    """(kernel name, jit function, compile-time constants, autotuning config) to compile.

    ``quick``: the first configuration of each kernel, causal only (four compiles).
    """
    kernels = (
        ("fwd", fwd._fwd_kernel, fwd.CUDA_CONFIGS, {}),
        ("dkdv", bwd._dkdv_kernel, bwd.CUDA_DKDV_CONFIGS, {"FUSE_DQ": False}),
        ("dkdv+atomic dq", bwd._dkdv_kernel, bwd.CUDA_DKDV_CONFIGS, {"FUSE_DQ": True}),
        ("dq", bwd._dq_kernel, bwd.CUDA_DQ_CONFIGS, {}),
    )
    for head_dim in head_dims:
        block_k = max(16, triton.next_power_of_2(head_dim))
        for name, fn, configs, extra in kernels:
            for causal in (True,) if quick else (False, True):
                for config in configs[:1] if quick else configs:
                    constexprs = {
                        "CAUSAL": causal, "BLOCK_K": block_k, "EVEN_K": block_k == head_dim,
                        # Uneven lengths: the masked loads and stores are the larger code.
                        "EVEN_M": False, "EVEN_N": False,
                        "FAST_SIGMOID": dtype != "fp32", "DOT_FP32": False,
                        "INPUT_PRECISION": "ieee" if dtype == "fp32" else "tf32",
                        **extra, **config.kwargs,
                    }
                    yield f"{name} k={head_dim} causal={causal}", fn, constexprs, config


def compile_all(
    arch: int, head_dims: tuple[int, ...], dtype: str, *, quick: bool = False
) -> list[Compiled]:
    """Compile every autotuning configuration of every kernel; raises on a compiler error."""
    target = GPUTarget("cuda", arch, 32)
    results = []
    for label, fn, constexprs, config in _variants(head_dims, dtype, quick):
        # Unit strides along the head dim are specialised to constants, as at launch.
        consts = {**constexprs, **{n: 1 for n in fn.arg_names
                                   if n.startswith("stride_") and n.endswith("k")}}
        src = ASTSource(fn=fn, signature=_signature(fn, dtype, consts), constexprs=consts)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        compiled = triton.compile(src, target=target, options=options)
        registers, spills = _resource_usage(compiled.asm["cubin"])
        results.append(Compiled(
            kernel=label,
            config=f"{config.kwargs} warps={config.num_warps} stages={config.num_stages}",
            shared_bytes=compiled.metadata.shared, registers=registers, spill_bytes=spills,
        ))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_MEMORY_LIMIT))
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtype", default="bf16", choices=sorted(TRITON_TYPES))
    parser.add_argument("--quick", action="store_true",
                        help="only the first configuration of each kernel, causal")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("TRITON_INTERPRET=1: the kernels are defined for the interpreter; run with "
              "TRITON_INTERPRET=0.", file=sys.stderr)
        return 2
    limit = SHARED_MEMORY_LIMIT[args.arch]
    ok = True
    for r in compile_all(args.arch, tuple(args.head_dims), args.dtype, quick=args.quick):
        fits = r.shared_bytes <= limit
        ok &= fits
        print(f"{r.kernel:<34} {r.config:<52} shared {r.shared_bytes // 1024:>3} KiB"
              f"{'' if fits else ' (TOO MUCH)'}  registers {r.registers}  "
              f"spilled {r.spill_bytes} B")
    print(f"all configurations compiled for sm_{args.arch}"
          + ("" if ok else "; some need more shared memory than the target has"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
