"""FlashSigmoid backward: dQ, dK, dV from dO by recomputing P = sigmoid(S) block by block.

With S = q k^T / sqrt(k) + bias and P = sigmoid(S) (Ramapuram et al., ICLR 2025):

    dV = P^T dO,   dP = dO V^T,   dS = P * (1 - P) * dP,
    dQ = dS K / sqrt(k),   dK = dS^T Q / sqrt(k).

Unlike softmax attention there is no rowsum(dO * O) term, so no preprocessing pass and nothing
saved from the forward but q, k, v. The work is split FlashAttention-2 style (Dao, 2023) into two
kernels that each own their output and write it once, so there are no atomics and the result is
deterministic:

* ``_dkdv_kernel``: one program per key block, streaming query blocks (dK, dV);
* ``_dq_kernel``: one program per query block, streaming key blocks (dQ).

Both recompute P and dP: seven block products instead of the five of a single kernel that
accumulates dQ with fp32 atomics (FlashAttention-2's CUDA backward), traded for no fp32 dQ buffer,
no atomic traffic and bit-reproducible gradients. The dQ kernel is the one to fuse away if the
backward falls short on a GPU.
"""

from __future__ import annotations

import os
from typing import Literal

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

# dK/dV programs own BLOCK_N keys and step through queries BLOCK_M at a time; BLOCK_N is a
# multiple of BLOCK_M so the diagonal blocks end exactly where the unmasked ones begin.
INTERPRETER_DKDV_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32}
# dQ programs own BLOCK_M queries and step through keys; BLOCK_M is a multiple of BLOCK_N.
INTERPRETER_DQ_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32}

CUDA_DKDV_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [
        (32, 128, 4, 5),
        (32, 128, 8, 3),
        (64, 128, 8, 3),
        (32, 64, 4, 3),
        (64, 64, 4, 2),
    ]
]
CUDA_DQ_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [
        (128, 32, 4, 5),
        (128, 32, 8, 3),
        (128, 64, 8, 3),
        (64, 32, 4, 3),
        (64, 64, 4, 2),
    ]
]


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, dqa_base, lo, hi, offs_n, offs_m, offs_k, t_q,
                head_dim, stride_qt, stride_qk, stride_dot, stride_dok, stride_dqat,
                stride_dqak, sig_a, sig_b, sm_scale,
                MASK_CAUSAL: tl.constexpr, EVEN_M: tl.constexpr, EVEN_K: tl.constexpr,
                BLOCK_M: tl.constexpr, FAST_SIGMOID: tl.constexpr, FUSE_DQ: tl.constexpr,
                DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """Accumulate dK (unscaled) and dV of one key block over query blocks [lo, hi).

    With FUSE_DQ, also add this key block's share of dQ into the fp32 buffer at ``dqa_base``.
    """
    for start_m in range(lo, hi, BLOCK_M):
        offs_i = start_m + offs_m
        q = _load_tile(q_base + offs_i[:, None] * stride_qt + offs_k[None, :] * stride_qk,
                       offs_i, t_q, offs_k, head_dim, EVEN_M, EVEN_K)
        do = _load_tile(do_base + offs_i[:, None] * stride_dot + offs_k[None, :] * stride_dok,
                        offs_i, t_q, offs_k, head_dim, EVEN_M, EVEN_K)
        # Transposed scores (keys x queries) so every product below is a plain tl.dot.
        p_t = _sigmoid(_mm(k, tl.trans(q), DOT_FP32, INPUT_PRECISION), sig_a, sig_b, FAST_SIGMOID)
        if MASK_CAUSAL:
            p_t = tl.where(offs_i[None, :] >= offs_n[:, None], p_t, 0.0)
        dv = _mm_acc(p_t.to(do.dtype), do, dv, DOT_FP32, INPUT_PRECISION)
        dp_t = _mm(v, tl.trans(do), DOT_FP32, INPUT_PRECISION)
        # sigmoid'(s) = p (1 - p); masked entries have p = 0 and so ds = 0.
        ds_t = (p_t * (1.0 - p_t) * dp_t).to(q.dtype)
        dk = _mm_acc(ds_t, q, dk, DOT_FP32, INPUT_PRECISION)
        if FUSE_DQ:
            # Other key blocks add to the same dQ rows concurrently; order does not matter for
            # correctness, only for the last bits (atomics are not bit-reproducible).
            dq = _mm(tl.trans(ds_t), k, DOT_FP32, INPUT_PRECISION) * sm_scale
            tl.atomic_add(dqa_base + offs_i[:, None] * stride_dqat + offs_k[None, :] * stride_dqak,
                          dq, mask=(offs_i[:, None] < t_q) & (offs_k[None, :] < head_dim),
                          sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_kernel(Q, K, V, DO, DK, DV, DQ_ACC,
                 stride_qb, stride_qh, stride_qt, stride_qk,
                 stride_kb, stride_kh, stride_kt, stride_kk,
                 stride_vb, stride_vh, stride_vt, stride_vk,
                 stride_dob, stride_doh, stride_dot, stride_dok,
                 stride_dkb, stride_dkh, stride_dkt, stride_dkk,
                 stride_dvb, stride_dvh, stride_dvt, stride_dvk,
                 stride_dqab, stride_dqah, stride_dqat, stride_dqak,
                 n_heads, t_q, t_k, head_dim, sig_a, sig_b, sm_scale,
                 CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
                 EVEN_K: tl.constexpr, FAST_SIGMOID: tl.constexpr, FUSE_DQ: tl.constexpr,
                 DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh
    dqa_base = DQ_ACC + b * stride_dqab + h * stride_dqah

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    k = _load_tile(k_base + offs_n[:, None] * stride_kt + offs_k[None, :] * stride_kk,
                   offs_n, t_k, offs_k, head_dim, EVEN_N, EVEN_K)
    v = _load_tile(v_base + offs_n[:, None] * stride_vt + offs_k[None, :] * stride_vk,
                   offs_n, t_k, offs_k, head_dim, EVEN_N, EVEN_K)
    dk = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)

    if CAUSAL:
        # Queries [start_n, start_n + BLOCK_N) straddle the diagonal; later ones see every key
        # of this block; earlier ones see none. Keys past the last query get dK = dV = 0.
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, dqa_base,
                             start_n, tl.minimum(start_n + BLOCK_N, t_q),
                             offs_n, offs_m, offs_k, t_q, head_dim,
                             stride_qt, stride_qk, stride_dot, stride_dok, stride_dqat,
                             stride_dqak, sig_a, sig_b, sm_scale,
                             True, EVEN_M, EVEN_K, BLOCK_M, FAST_SIGMOID, FUSE_DQ, DOT_FP32,
                             INPUT_PRECISION)
        lo = start_n + BLOCK_N
    else:
        lo = 0
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, dqa_base, lo, t_q,
                         offs_n, offs_m, offs_k, t_q, head_dim,
                         stride_qt, stride_qk, stride_dot, stride_dok, stride_dqat, stride_dqak,
                         sig_a, sig_b, sm_scale,
                         False, EVEN_M, EVEN_K, BLOCK_M, FAST_SIGMOID, FUSE_DQ, DOT_FP32,
                         INPUT_PRECISION)

    dk_base = DK + b * stride_dkb + h * stride_dkh
    dv_base = DV + b * stride_dvb + h * stride_dvh
    _store_tile(dk_base + offs_n[:, None] * stride_dkt + offs_k[None, :] * stride_dkk,
                (dk * sm_scale).to(DK.dtype.element_ty), offs_n, t_k, offs_k, head_dim,
                EVEN_N, EVEN_K)
    _store_tile(dv_base + offs_n[:, None] * stride_dvt + offs_k[None, :] * stride_dvk,
                dv.to(DV.dtype.element_ty), offs_n, t_k, offs_k, head_dim, EVEN_N, EVEN_K)


@triton.jit
def _dq_inner(dq, q, do, k_base, v_base, lo, hi, offs_m, offs_n, offs_k, t_k, head_dim,
              stride_kt, stride_kk, stride_vt, stride_vk, sig_a, sig_b,
              MASK_CAUSAL: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr,
              BLOCK_N: tl.constexpr, FAST_SIGMOID: tl.constexpr, DOT_FP32: tl.constexpr,
              INPUT_PRECISION: tl.constexpr):
    """Accumulate dQ (unscaled) of one query block over key blocks [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_j = start_n + offs_n
        k = _load_tile(k_base + offs_j[:, None] * stride_kt + offs_k[None, :] * stride_kk,
                       offs_j, t_k, offs_k, head_dim, EVEN_N, EVEN_K)
        v = _load_tile(v_base + offs_j[:, None] * stride_vt + offs_k[None, :] * stride_vk,
                       offs_j, t_k, offs_k, head_dim, EVEN_N, EVEN_K)
        p = _sigmoid(_mm(q, tl.trans(k), DOT_FP32, INPUT_PRECISION), sig_a, sig_b, FAST_SIGMOID)
        if MASK_CAUSAL:
            p = tl.where(offs_m[:, None] >= offs_j[None, :], p, 0.0)
        dp = _mm(do, tl.trans(v), DOT_FP32, INPUT_PRECISION)
        ds = p * (1.0 - p) * dp
        dq = _mm_acc(ds.to(k.dtype), k, dq, DOT_FP32, INPUT_PRECISION)
    return dq


@triton.jit
def _dq_kernel(Q, K, V, DO, DQ,
               stride_qb, stride_qh, stride_qt, stride_qk,
               stride_kb, stride_kh, stride_kt, stride_kk,
               stride_vb, stride_vh, stride_vt, stride_vk,
               stride_dob, stride_doh, stride_dot, stride_dok,
               stride_dqb, stride_dqh, stride_dqt, stride_dqk,
               n_heads, t_q, t_k, head_dim, sig_a, sig_b, sm_scale,
               CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
               EVEN_K: tl.constexpr, FAST_SIGMOID: tl.constexpr, DOT_FP32: tl.constexpr,
               INPUT_PRECISION: tl.constexpr):
    # Causal: the last query blocks do the most work; launch them first to balance the tail.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if CAUSAL else tl.program_id(0)
    start_m = pid_m * BLOCK_M
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    q = _load_tile(q_base + offs_m[:, None] * stride_qt + offs_k[None, :] * stride_qk,
                   offs_m, t_q, offs_k, head_dim, EVEN_M, EVEN_K)
    do = _load_tile(do_base + offs_m[:, None] * stride_dot + offs_k[None, :] * stride_dok,
                    offs_m, t_q, offs_k, head_dim, EVEN_M, EVEN_K)
    dq = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)

    hi_full = tl.minimum(start_m, t_k) if CAUSAL else t_k
    dq = _dq_inner(dq, q, do, k_base, v_base, 0, hi_full, offs_m, offs_n, offs_k, t_k, head_dim,
                   stride_kt, stride_kk, stride_vt, stride_vk, sig_a, sig_b,
                   False, EVEN_N, EVEN_K, BLOCK_N, FAST_SIGMOID, DOT_FP32, INPUT_PRECISION)
    if CAUSAL:
        dq = _dq_inner(dq, q, do, k_base, v_base, start_m, tl.minimum(start_m + BLOCK_M, t_k),
                       offs_m, offs_n, offs_k, t_k, head_dim,
                       stride_kt, stride_kk, stride_vt, stride_vk, sig_a, sig_b,
                       True, EVEN_N, EVEN_K, BLOCK_N, FAST_SIGMOID, DOT_FP32, INPUT_PRECISION)

    dq_base = DQ + b * stride_dqb + h * stride_dqh
    _store_tile(dq_base + offs_m[:, None] * stride_dqt + offs_k[None, :] * stride_dqk,
                (dq * sm_scale).to(DQ.dtype.element_ty), offs_m, t_q, offs_k, head_dim,
                EVEN_M, EVEN_K)


_EVEN = {
    "EVEN_M": lambda a: a["t_q"] % a["BLOCK_M"] == 0,
    "EVEN_N": lambda a: a["t_k"] % a["BLOCK_N"] == 0,
}
TUNING_KEY = ["t_q", "t_k", "head_dim", "CAUSAL", "FAST_SIGMOID"]
_dkdv_kernel_heuristic = triton.heuristics(_EVEN)(_dkdv_kernel)
_dq_kernel_heuristic = triton.heuristics(_EVEN)(_dq_kernel)
_dkdv_kernel_tuned = triton.autotune(configs=CUDA_DKDV_CONFIGS, key=TUNING_KEY)(
    _dkdv_kernel_heuristic
)
# Timing a config runs the kernel: the atomic dQ buffer must be zeroed before every trial.
_dkdv_kernel_fused_tuned = triton.autotune(
    configs=CUDA_DKDV_CONFIGS, key=TUNING_KEY, reset_to_zero=["DQ_ACC"]
)(_dkdv_kernel_heuristic)
_dq_kernel_tuned = triton.autotune(configs=CUDA_DQ_CONFIGS, key=TUNING_KEY)(_dq_kernel_heuristic)

DqMode = Literal["split", "atomic"]
DQ_MODES: tuple[str, ...] = ("split", "atomic")
# Default dQ strategy when the caller passes none: "split" (dQ kernel, deterministic) or
# "atomic" (dQ added into an fp32 buffer by the dK/dV kernel; five block products, not seven).
DQ_MODE_ENV = "ISOFLOP_FLASH_SIGMOID_DQ"


def default_dq_mode() -> str:
    """The dQ strategy from ``ISOFLOP_FLASH_SIGMOID_DQ`` ("split" when unset)."""
    mode = os.environ.get(DQ_MODE_ENV, "split")
    if mode not in DQ_MODES:
        raise ValueError(f"{DQ_MODE_ENV}={mode!r} is not one of {DQ_MODES}")
    return mode


def _check_blocks(cfg: dict[str, int], outer: str, inner: str, kernel: str) -> None:
    if cfg[outer] % cfg[inner] != 0:
        raise ValueError(f"{kernel} kernel: {outer} must be a multiple of {inner}, got {cfg}")


def flash_sigmoid_backward(
    do_bhtk: torch.Tensor,
    q_bhtk: torch.Tensor,
    k_bhtk: torch.Tensor,
    v_bhtk: torch.Tensor,
    *,
    causal: bool,
    bias: float | None,
    dq_bhtk: torch.Tensor | None = None,
    dk_bhtk: torch.Tensor | None = None,
    dv_bhtk: torch.Tensor | None = None,
    dq_mode: DqMode | None = None,
    dkdv_config: dict[str, int] | None = None,
    dq_config: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernels; returns (dq, dk, dv), allocating any not given.

    ``dq_mode`` picks the dQ strategy (see ``DQ_MODE_ENV``; default from the environment).
    ``dkdv_config`` (BLOCK_N a multiple of BLOCK_M) and ``dq_config`` (BLOCK_M a multiple of
    BLOCK_N) fix the block sizes instead of the autotuned CUDA choice or interpreter default.
    """
    check_kernel_inputs(q_bhtk, k_bhtk, v_bhtk)
    check_bias(bias)
    if do_bhtk.shape != q_bhtk.shape or do_bhtk.device != q_bhtk.device:
        raise ValueError(
            f"do_bhtk is {tuple(do_bhtk.shape)} on {do_bhtk.device}, expected "
            f"{tuple(q_bhtk.shape)} on {q_bhtk.device} (the shape and device of q)"
        )
    dq_mode = default_dq_mode() if dq_mode is None else dq_mode
    if dq_mode not in DQ_MODES:
        raise ValueError(f"dq_mode={dq_mode!r} is not one of {DQ_MODES}")
    fuse_dq = dq_mode == "atomic"
    do_bhtk = do_bhtk.to(q_bhtk.dtype)
    b, h, t_q, head_dim = q_bhtk.shape
    t_k = k_bhtk.shape[2]
    params = launch_params(q_bhtk, t_k, bias)
    dq_bhtk = output_buffer("dq_bhtk", dq_bhtk, q_bhtk)
    dk_bhtk = output_buffer("dk_bhtk", dk_bhtk, k_bhtk)
    dv_bhtk = output_buffer("dv_bhtk", dv_bhtk, v_bhtk)
    # The fused path accumulates dQ in fp32; the split path passes dK as an unused stand-in.
    dq_acc = (torch.zeros(q_bhtk.shape, dtype=torch.float32, device=q_bhtk.device)
              if fuse_dq else dk_bhtk)

    strides = (*q_bhtk.stride(), *k_bhtk.stride(), *v_bhtk.stride(), *do_bhtk.stride())
    scalars = (h, t_q, t_k, head_dim, params.sig_a, params.sig_b, params.sm_scale)
    constexprs = {
        "CAUSAL": causal,
        "BLOCK_K": params.block_k,
        "EVEN_K": params.even_k,
        "FAST_SIGMOID": params.fast_sigmoid,
        "DOT_FP32": params.dot_fp32,
        "INPUT_PRECISION": params.input_precision,
    }
    dkdv_args = (q_bhtk, k_bhtk, v_bhtk, do_bhtk, dk_bhtk, dv_bhtk, dq_acc, *strides,
                 *dk_bhtk.stride(), *dv_bhtk.stride(), *dq_acc.stride(), *scalars)
    dq_args = (q_bhtk, k_bhtk, v_bhtk, do_bhtk, dq_bhtk, *strides, *dq_bhtk.stride(), *scalars)

    tuned = not interpreter_enabled()
    if dk_bhtk.numel() > 0:
        if dkdv_config is None and tuned:
            def dkdv_grid(meta: dict[str, int]) -> tuple[int, int]:
                return (triton.cdiv(t_k, meta["BLOCK_N"]), b * h)

            kernel = _dkdv_kernel_fused_tuned if fuse_dq else _dkdv_kernel_tuned
            kernel[dkdv_grid](*dkdv_args, **constexprs, FUSE_DQ=fuse_dq)
        else:
            cfg = dict(INTERPRETER_DKDV_CONFIG if dkdv_config is None else dkdv_config)
            _check_blocks(cfg, "BLOCK_N", "BLOCK_M", "dK/dV")
            grid = (triton.cdiv(t_k, cfg["BLOCK_N"]), b * h)
            _dkdv_kernel_heuristic[grid](*dkdv_args, **constexprs, FUSE_DQ=fuse_dq, **cfg)
    if fuse_dq:
        dq_bhtk.copy_(dq_acc)
    elif dq_bhtk.numel() > 0:
        if dq_config is None and tuned:
            def dq_grid(meta: dict[str, int]) -> tuple[int, int]:
                return (triton.cdiv(t_q, meta["BLOCK_M"]), b * h)

            _dq_kernel_tuned[dq_grid](*dq_args, **constexprs)
        else:
            cfg = dict(INTERPRETER_DQ_CONFIG if dq_config is None else dq_config)
            _check_blocks(cfg, "BLOCK_M", "BLOCK_N", "dQ")
            grid = (triton.cdiv(t_q, cfg["BLOCK_M"]), b * h)
            _dq_kernel_heuristic[grid](*dq_args, **constexprs, **cfg)
    return dq_bhtk, dk_bhtk, dv_bhtk
