"""FlashSigmoid forward: o = sigmoid(q k^T / sqrt(k) + bias) v, one query block per program.

FlashAttention-2 (Dao, 2023) loop order: a program owns BLOCK_M query rows of one (batch, head)
and streams key/value blocks through on-chip memory. With a sigmoid instead of a softmax
(Ramapuram et al., ICLR 2025) each block's contribution is final, so the accumulator is never
rescaled and no log-sum-exp is stored for the backward.

Causal masking is top-left aligned (query i sees keys j <= i), like ``torch.tril`` and
``scaled_dot_product_attention(is_causal=True)``. Key blocks left of the diagonal run unmasked;
only blocks that cross it pay for the mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._attention_inputs import check_bias, check_kernel_inputs
from kernels._flash_sigmoid_common import (
    _load_tile,
    _mm,
    _mm_acc,
    _sigmoid,
    _store_tile,
    interpreter_enabled,
    launch_params,
    output_buffer,
)

# A fixed configuration for the interpreter (autotuning there only costs time). BLOCK_M is a
# multiple of BLOCK_N, so unmasked key blocks end exactly at a query block's first row.
INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32}

# A small search space for CUDA (H100-sized; shared memory limits drop the big ones for
# head_dim 128 automatically: the autotuner skips configs that fail to compile).
CUDA_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [
        (128, 64, 4, 3),
        (128, 64, 8, 3),
        (128, 64, 8, 4),
        (128, 128, 8, 2),
        (128, 128, 8, 3),
        (128, 32, 4, 4),
        (64, 64, 4, 3),
    ]
]


@triton.jit
def _fwd_inner(acc, q, k_base, v_base, lo, hi, offs_m, offs_n, offs_k, t_k, head_dim,
               stride_kt, stride_kk, stride_vt, stride_vk, sig_a, sig_b,
               MASK_CAUSAL: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
               BLOCK_N: tl.constexpr, FAST_SIGMOID: tl.constexpr, DOT_FP32: tl.constexpr,
               INPUT_PRECISION: tl.constexpr):
    """Accumulate sigmoid(q k^T) v over key blocks [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_j = start_n + offs_n
        k = _load_tile(k_base + offs_j[:, None] * stride_kt + offs_k[None, :] * stride_kk,
                       offs_j, t_k, offs_k, head_dim, EVEN_N, EVEN_K)
        v = _load_tile(v_base + offs_j[:, None] * stride_vt + offs_k[None, :] * stride_vk,
                       offs_j, t_k, offs_k, head_dim, EVEN_N, EVEN_K)
        p = _sigmoid(_mm(q, tl.trans(k), DOT_FP32, INPUT_PRECISION), sig_a, sig_b, FAST_SIGMOID)
        if MASK_CAUSAL:
            # Exactly zero, so masked scores add nothing and pass no gradient.
            p = tl.where(offs_m[:, None] >= offs_j[None, :], p, 0.0)
        acc = _mm_acc(p.to(v.dtype), v, acc, DOT_FP32, INPUT_PRECISION)
    return acc


@triton.jit
def _fwd_kernel(Q, K, V, Out,
                stride_qb, stride_qh, stride_qt, stride_qk,
                stride_kb, stride_kh, stride_kt, stride_kk,
                stride_vb, stride_vh, stride_vt, stride_vk,
                stride_ob, stride_oh, stride_ot, stride_ok,
                n_heads, t_q, t_k, head_dim, sig_a, sig_b,
                CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
                EVEN_K: tl.constexpr, FAST_SIGMOID: tl.constexpr, DOT_FP32: tl.constexpr,
                INPUT_PRECISION: tl.constexpr):
    # Causal: the last query blocks do the most work; launch them first to balance the tail.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    start_m = pid_m * BLOCK_M
    pid_bh = tl.program_id(1)
    # int64 base offsets: b * stride_b overflows int32 for large batches of long sequences.
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    o_base = Out + b * stride_ob + h * stride_oh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    q = _load_tile(q_base + offs_m[:, None] * stride_qt + offs_k[None, :] * stride_qk,
                   offs_m, t_q, offs_k, head_dim, EVEN_M, EVEN_K)
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)

    # Causal: keys [0, start_m) are visible to every row of this block; [start_m, start_m +
    # BLOCK_M) straddle the diagonal; later keys are invisible and never loaded.
    hi_full = tl.minimum(start_m, t_k) if CAUSAL else t_k
    acc = _fwd_inner(acc, q, k_base, v_base, 0, hi_full, offs_m, offs_n, offs_k, t_k, head_dim,
                     stride_kt, stride_kk, stride_vt, stride_vk, sig_a, sig_b,
                     False, EVEN_N, EVEN_K, BLOCK_N, FAST_SIGMOID, DOT_FP32, INPUT_PRECISION)
    if CAUSAL:
        acc = _fwd_inner(acc, q, k_base, v_base, start_m, tl.minimum(start_m + BLOCK_M, t_k),
                         offs_m, offs_n, offs_k, t_k, head_dim,
                         stride_kt, stride_kk, stride_vt, stride_vk, sig_a, sig_b,
                         True, EVEN_N, EVEN_K, BLOCK_N, FAST_SIGMOID, DOT_FP32, INPUT_PRECISION)

    _store_tile(o_base + offs_m[:, None] * stride_ot + offs_k[None, :] * stride_ok,
                acc.to(Out.dtype.element_ty), offs_m, t_q, offs_k, head_dim, EVEN_M, EVEN_K)


_fwd_kernel_heuristic = triton.heuristics({
    "EVEN_M": lambda a: a["t_q"] % a["BLOCK_M"] == 0,
    "EVEN_N": lambda a: a["t_k"] % a["BLOCK_N"] == 0,
})(_fwd_kernel)

# Re-tuned per sequence lengths, head dim, masking and dtype (the autotuner adds dtypes itself).
TUNING_KEY = ["t_q", "t_k", "head_dim", "CAUSAL", "FAST_SIGMOID"]
_fwd_kernel_tuned = triton.autotune(configs=CUDA_CONFIGS, key=TUNING_KEY)(_fwd_kernel_heuristic)


def flash_sigmoid_forward(
    q_bhtk: torch.Tensor,
    k_bhtk: torch.Tensor,
    v_bhtk: torch.Tensor,
    *,
    causal: bool,
    bias: float | None,
    out_bhtk: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """Launch the forward kernel; returns ``out_bhtk`` (allocated when not given).

    ``config`` fixes BLOCK_M/BLOCK_N (and optionally num_warps/num_stages) instead of the
    autotuned CUDA choice or the interpreter default; BLOCK_M must be a multiple of BLOCK_N.
    """
    check_kernel_inputs(q_bhtk, k_bhtk, v_bhtk)
    check_bias(bias)
    b, h, t_q, head_dim = q_bhtk.shape
    t_k = k_bhtk.shape[2]
    params = launch_params(q_bhtk, t_k, bias)
    out_bhtk = output_buffer("out_bhtk", out_bhtk, q_bhtk)
    if out_bhtk.numel() == 0:
        return out_bhtk

    args = (
        q_bhtk, k_bhtk, v_bhtk, out_bhtk,
        *q_bhtk.stride(), *k_bhtk.stride(), *v_bhtk.stride(), *out_bhtk.stride(),
        h, t_q, t_k, head_dim, params.sig_a, params.sig_b,
    )
    constexprs = {
        "CAUSAL": causal,
        "BLOCK_K": params.block_k,
        "EVEN_K": params.even_k,
        "FAST_SIGMOID": params.fast_sigmoid,
        "DOT_FP32": params.dot_fp32,
        "INPUT_PRECISION": params.input_precision,
    }
    if config is None and not interpreter_enabled():
        def grid(meta: dict[str, int]) -> tuple[int, int]:
            return (triton.cdiv(t_q, meta["BLOCK_M"]), b * h)

        _fwd_kernel_tuned[grid](*args, **constexprs)
        return out_bhtk

    config = dict(INTERPRETER_CONFIG if config is None else config)
    if config["BLOCK_M"] % config["BLOCK_N"] != 0:
        raise ValueError(f"BLOCK_M must be a multiple of BLOCK_N, got {config}")
    grid_fixed = (triton.cdiv(t_q, config["BLOCK_M"]), b * h)
    _fwd_kernel_heuristic[grid_fixed](*args, **constexprs, **config)
    return out_bhtk
