"""The shape rule: which GPT a target parameter count N becomes, and its exact parameter count.

The N a study asks for is the **total** parameter count (embeddings included): with a byte-level
vocabulary of 256 the embedding is a small share of every model above a few thousand parameters,
and the total is what ``RunPlan.n_params`` records. Both counts are returned by ``count_params``
so laws can be fitted on either.

The rule (``derive_shape``), pure integer arithmetic, O(number of widths):

1. Widths are multiples of ``head_dim`` (``d_model = n_head * head_dim``); ``d_ff = mlp_ratio *
   d_model``; depths are ``n_layer >= 1`` with ``d_model / n_layer`` inside the aspect band
   ``[aspect_ratio / 2, 2 * aspect_ratio]`` (``n_layer = 1`` is always allowed, so the narrowest
   models exist even when the band is empty).
2. Among all such (d_model, n_layer), the candidates whose exact total count lies within
   ``N_TOLERANCE`` (5 %) of the target in log space compete on the aspect ratio: the one whose
   ``log(d_model / n_layer)`` is closest to ``log(aspect_ratio)`` wins (ties: closer count, then
   narrower).
3. When no candidate is that close (small models, where one more layer or head is a big step), the
   candidate with the closest count in log space wins.

Mixture-of-experts shapes (``n_experts`` E, ``top_k`` K) follow the same rule with every MLP
replaced by E expert MLPs and a router; the count matched to the target is the total, or the
active count (K experts) when ``MoEConfig.hold`` is ``"active"``.

Holding the active count is a promise that runs of different sparsities compute the same per
token, so step 3 does not apply to it: when no shape inside the aspect band is within the
tolerance, every depth is tried (the aspect ratio still decides among those within it), and a
target that no shape reaches within the tolerance (small models, where the widths available are
few) raises ``ValueError`` naming the target and the nearest counts below and above it.

A target more than the tolerance below the smallest model (one head, one layer) raises
``ValueError``. The realised counts are exact and recorded in the run's plan, so the small
mismatch to the target never reaches a fitted law.
"""

from __future__ import annotations

import math

from trainers.base import ModelShape
from trainers.config import TrainerConfig

#: Byte-level tokenizer: every byte value is a token.
VOCAB_SIZE = 256

#: Relative distance (in log space) within which the aspect ratio decides between shapes.
N_TOLERANCE = 0.05


def _counts(d: int, config: TrainerConfig, mlps: int = 1, router: int = 0) -> tuple[int, int, int]:
    """(fixed, per_layer, embedding) parameter counts; total = fixed + n_layer * per_layer.

    The layout mirrors ``trainers.model.GPT``: bias-free linear layers and bias-free LayerNorms
    (one weight vector of width d each), two norms per block plus a final norm. ``mlps`` MLPs of
    width ``mlp_ratio * d`` are counted per layer (1 for a dense block; E for an MoE block's total,
    K for its active count) plus a ``d x router`` router (E for MoE, 0 for dense).
    """
    model = config.model
    f = model.mlp_ratio * d
    per_layer = 2 * d  # ln_1, ln_2 weights
    per_layer += 3 * d * d + d * d  # qkv and output projection
    per_layer += mlps * 2 * d * f  # MLP up and down projections, per expert
    per_layer += router * d  # MoE router
    if model.attention == "sigmoid":
        per_layer += 2 * model.head_dim  # QK-norm weights (one per q and k, shared by heads)
    if model.sigma_reparam:
        per_layer += 2 if router else 4  # one gamma per reparametrised linear layer
    embedding = VOCAB_SIZE * d  # token embedding
    if model.positional == "learned":
        embedding += config.seq_len * d
    fixed = embedding + d  # + final norm
    if not model.tie_embeddings:
        fixed += VOCAB_SIZE * d  # separate output head
    return fixed, per_layer, embedding


def count_params(shape: ModelShape, config: TrainerConfig) -> tuple[int, int]:
    """Exact (total, non_embedding) parameter counts of ``trainers.model.GPT(shape, config)``.

    Non-embedding = total minus the token and position embeddings; a tied output head shares the
    token embedding and is counted once (as embedding), an untied head counts as non-embedding.
    """
    if shape.d_ff != config.model.mlp_ratio * shape.d_model:
        raise ValueError(
            f"shape.d_ff: {shape.d_ff} != mlp_ratio * d_model = "
            f"{config.model.mlp_ratio * shape.d_model}"
        )
    if shape.d_model != shape.n_head * config.model.head_dim:
        raise ValueError(
            f"shape: d_model={shape.d_model} != n_head * head_dim = "
            f"{shape.n_head} * {config.model.head_dim}"
        )
    fixed, per_layer, embedding = _counts(shape.d_model, config, *_moe_counts(shape)[0])
    total = fixed + shape.n_layer * per_layer
    return total, total - embedding


def _moe_counts(shape: ModelShape) -> tuple[tuple[int, int], tuple[int, int]]:
    """((mlps, router) for the total count, (mlps, router) for the active count) of a shape."""
    if shape.n_experts == 0 and shape.top_k == 0:
        return (1, 0), (1, 0)
    if not 1 <= shape.top_k <= shape.n_experts:
        raise ValueError(
            f"shape: top_k={shape.top_k} must be between 1 and n_experts={shape.n_experts}"
        )
    return (shape.n_experts, shape.n_experts), (shape.top_k, shape.n_experts)


def count_active_params(shape: ModelShape, config: TrainerConfig) -> int:
    """Exact parameters touched per token: the total minus the (E - K) experts a token skips.

    Embeddings, attention, norms and the router count in full (the router scores every expert
    for every token), as in torchtitan's and Abnar et al.'s (2025) active counts. Equal to the
    total for dense shapes.
    """
    total, _ = count_params(shape, config)
    (mlps, _), (active, _) = _moe_counts(shape)
    f = config.model.mlp_ratio * shape.d_model
    return total - shape.n_layer * (mlps - active) * 2 * shape.d_model * f


def _layer_band(d: int, aspect: float) -> tuple[int, int]:
    """Depths allowed at width d: d / n_layer within [aspect / 2, 2 * aspect], always >= 1."""
    lo = max(1, math.ceil(d / (2.0 * aspect)))
    hi = max(1, math.floor(2.0 * d / aspect))
    return (lo, hi) if lo <= hi else (1, 1)


def _validate(n_target: int, config: TrainerConfig) -> None:
    model = config.model
    if model.head_dim < 1:
        raise ValueError(f"model.head_dim: must be >= 1, got {model.head_dim}")
    if model.mlp_ratio < 1:
        raise ValueError(f"model.mlp_ratio: must be >= 1, got {model.mlp_ratio}")
    if not model.aspect_ratio > 0:
        raise ValueError(f"model.aspect_ratio: must be > 0, got {model.aspect_ratio}")
    if n_target < 1:
        raise ValueError(f"n_params: must be a positive integer, got {n_target}")


def derive_shape(
    n_target: int, config: TrainerConfig, *, n_experts: int = 0, top_k: int = 0
) -> ModelShape:
    """The model shape the rule in this module's docstring assigns to ``n_target`` params.

    Dense by default. With ``n_experts`` E and ``top_k`` K every block's MLP is E routed experts
    (``trainers.moe``), and the target is the total count, or the active count when
    ``config.moe.hold`` is ``"active"``.
    """
    _validate(n_target, config)
    moe_shape = ModelShape(
        n_layer=1,
        d_model=1,
        n_head=1,
        d_ff=1,
        vocab_size=1,
        seq_len=1,
        n_experts=n_experts,
        top_k=top_k,
    )
    total_counts, active_counts = _moe_counts(moe_shape)
    mlps_router = active_counts if n_experts and config.moe.hold == "active" else total_counts
    head_dim = config.model.head_dim
    aspect = config.model.aspect_ratio
    log_target = math.log(n_target)
    log_aspect = math.log(aspect)

    smallest = sum(_counts(head_dim, config, *mlps_router)[:2])
    if math.log(smallest) - log_target > N_TOLERANCE:
        raise ValueError(
            f"n_params: target {n_target} is below the smallest model ({smallest} parameters at "
            f"d_model={head_dim}, n_layer=1); lower model.head_dim or raise the target"
        )

    # Candidates compare as tuples: (aspect distance, count distance, d, n_layer) inside the
    # tolerance, (count distance, d, n_layer) for the closest-count fallback.
    best_in: tuple[float, float, int, int] | None = None
    best_any: tuple[float, int, int] | None = None
    d = head_dim
    while True:
        fixed, per_layer, _ = _counts(d, config, *mlps_router)
        lo, hi = _layer_band(d, aspect)
        min_count = fixed + lo * per_layer
        # Counts grow with d at the band's lower edge, so once the smallest model at this width
        # is both past the tolerance and no closer than the best so far, wider ones are worse.
        dist_min = math.log(min_count) - log_target
        if dist_min > N_TOLERANCE and best_any is not None and dist_min >= best_any[0]:
            break
        # Depths whose count is within the tolerance form an interval (count is linear in depth).
        l_in_lo = max(lo, math.ceil((n_target * math.exp(-N_TOLERANCE) - fixed) / per_layer))
        l_in_hi = min(hi, math.floor((n_target * math.exp(N_TOLERANCE) - fixed) / per_layer))
        if l_in_lo <= l_in_hi:
            ideal = d / aspect
            for n_layer in {
                min(max(math.floor(ideal), l_in_lo), l_in_hi),
                min(max(math.ceil(ideal), l_in_lo), l_in_hi),
            }:
                count = fixed + n_layer * per_layer
                key = (
                    abs(math.log(d / n_layer) - log_aspect),
                    abs(math.log(count) - log_target),
                    d,
                    n_layer,
                )
                if best_in is None or key < best_in:
                    best_in = key
        # Closest count at this width: the depth nearest the continuous solution, clamped.
        l_star = (n_target - fixed) / per_layer
        for n_layer in {min(max(math.floor(l_star), lo), hi), min(max(math.ceil(l_star), lo), hi)}:
            count = fixed + n_layer * per_layer
            key_any = (abs(math.log(count) - log_target), d, n_layer)
            if best_any is None or key_any < best_any:
                best_any = key_any
        d += head_dim

    if best_in is None and n_experts and config.moe.hold == "active":
        best_in = _in_tolerance_at_any_depth(n_target, config, mlps_router, n_experts, top_k)
    if best_in is not None:
        d, n_layer = best_in[2], best_in[3]
    else:
        assert best_any is not None
        d, n_layer = best_any[1], best_any[2]
    return ModelShape(
        n_layer=n_layer,
        d_model=d,
        n_head=d // head_dim,
        d_ff=config.model.mlp_ratio * d,
        vocab_size=VOCAB_SIZE,
        seq_len=config.seq_len,
        n_experts=n_experts,
        top_k=top_k,
    )


def _in_tolerance_at_any_depth(
    n_target: int, config: TrainerConfig, mlps_router: tuple[int, int], n_experts: int, top_k: int
) -> tuple[float, float, int, int]:
    """The shape (as ``derive_shape``'s in-tolerance key) whose count is within ``N_TOLERANCE`` of
    the target at any depth, closest to the aspect ratio; else ``ValueError`` with the nearest
    counts below and above the target (the active-count hold, see the module docstring)."""
    head_dim = config.model.head_dim
    log_target = math.log(n_target)
    log_aspect = math.log(config.model.aspect_ratio)
    low, high = n_target * math.exp(-N_TOLERANCE), n_target * math.exp(N_TOLERANCE)
    best: tuple[float, float, int, int] | None = None
    below: tuple[int, int, int] | None = None  # (count, d, n_layer): the largest count <= target
    above: tuple[int, int, int] | None = None  # the smallest count > target
    d = head_dim
    while True:
        fixed, per_layer, _ = _counts(d, config, *mlps_router)
        # Counts are linear in depth: the depths either side of the target, and those in tolerance.
        under = math.floor((n_target - fixed) / per_layer)
        for n_layer in (under, under + 1):
            count = fixed + n_layer * per_layer
            if n_layer >= 1 and count <= n_target and (below is None or count > below[0]):
                below = (count, d, n_layer)
            if n_layer >= 1 and count > n_target and (above is None or count < above[0]):
                above = (count, d, n_layer)
        first = max(1, math.ceil((low - fixed) / per_layer))
        last = math.floor((high - fixed) / per_layer)
        ideal = d / config.model.aspect_ratio
        for n_layer in {min(max(math.floor(ideal), first), last), min(max(math.ceil(ideal), first), last)}:
            if first <= n_layer <= last:
                count = fixed + n_layer * per_layer
                key = (abs(math.log(d / n_layer) - log_aspect), abs(math.log(count) - log_target), d, n_layer)
                if best is None or key < best:
                    best = key
        if fixed + per_layer > high:  # one layer is past the tolerance here, and wider is more
            break
        d += head_dim
    if best is not None:
        return best
    nearest = " and ".join(f"{t[0]} (d_model={t[1]}, n_layer={t[2]})" for t in (below, above) if t)
    raise ValueError(
        f"n_params: moe.hold is 'active', but no model of E={n_experts} experts with top_k={top_k} "
        f"(S={(n_experts - top_k) / n_experts:g}) has an active count within {N_TOLERANCE:.0%} of "
        f"the target {n_target}; the nearest are {nearest}. Move the target near one of them, or "
        "lower model.head_dim"
    )
