"""Training FLOPs per token under the two conventions of ``TrainerConfig.flop_convention``.

Training costs about 3x the forward pass (the backward pass computes gradients with respect to
both activations and weights: two matmuls per forward matmul), and a forward matmul with a
(m x n) weight costs 2*m*n FLOPs per token (multiply and add). Hence 6 FLOPs per parameter per
token (Kaplan et al. 2020, section 2.1).

``"6N"``
    ``6 * N`` (N the total count, or the active count for mixtures of experts): the C = 6·N·D convention of Kaplan et al. (2020) and Hoffmann et al. (2022)
    with N the total parameter count. It ignores attention's sequence-length term and counts
    embedding lookups as if they were matmuls.

``"6N+attn"``
    ``6 * N_matmul + 12 * n_layer * d_model * seq_len``, where ``N_matmul`` is the
    non-embedding count plus the output head when it is tied (an untied head is already part
    of the non-embedding count):

    - ``6 * N_non_embedding``: every block's weights; embedding lookups cost no FLOPs and are
      left out, as in Kaplan et al. (2020, table 1).
    - ``6 * d_model * vocab``: the output layer. Porian et al. (2024, "Resolving discrepancies in
      compute-optimal scaling of language models") show that dropping it biases small-scale
      fits; a tied head shares its weights with the embedding but its matmul still runs.
    - ``12 * n_layer * d_model * seq_len``: attention scores q·k^T and the weighted sum of
      values, 2 matmuls of 2·t·d FLOPs per token per layer forward, x3 for training (nanoGPT's
      ``estimate_mfu``; Chowdhery et al. 2022, PaLM, appendix B). The full t x t square is
      counted, as both sources do, although causal masking could skip half of it.

    Norm weights (``2 * n_layer + 1`` vectors of width d, plus QK-norm) sit in the
    non-embedding count and are charged 6 FLOPs each although they are elementwise: about
    ``1 / (6 * d_model)`` of a block's weights, 0.3 % at ``d_model = 64`` and under 0.05 % from
    ``d_model = 384``. Keeping them makes the convention a function of the recorded counts only.
"""

from __future__ import annotations

from trainers.base import ModelShape
from trainers.config import TrainerConfig
from trainers.shapes import count_active_params, count_params

FLOP_CONVENTIONS: tuple[str, ...] = ("6N", "6N+attn")


def flops_per_token(shape: ModelShape, config: TrainerConfig) -> float:
    """Training FLOPs per token of the GPT ``shape`` under ``config.flop_convention``.

    Parameter counts are the active ones (``trainers.shapes.count_active_params``): a
    mixture-of-experts token passes through K of its E experts, so only those K cost FLOPs
    (torchtitan's convention of weighting routed experts by top_k / E; Abnar et al. 2025's
    C = 6 * N_active * D). For dense shapes active and total counts are equal.
    """
    total, non_embedding = count_params(shape, config)
    skipped = total - count_active_params(shape, config)
    total, non_embedding = total - skipped, non_embedding - skipped
    if config.flop_convention == "6N":
        return 6.0 * total
    if config.flop_convention == "6N+attn":
        head = shape.d_model * shape.vocab_size
        # An untied head is already inside the non-embedding count; a tied one is not.
        matmul_params = non_embedding + (head if config.model.tie_embeddings else 0)
        attention = 12 * shape.n_layer * shape.d_model * shape.seq_len
        return 6.0 * matmul_params + attention
    raise ValueError(
        f"flop_convention: unknown convention {config.flop_convention!r}; "
        f"valid conventions: {', '.join(FLOP_CONVENTIONS)}"
    )
