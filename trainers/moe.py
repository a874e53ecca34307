"""Top-k routed mixture-of-experts MLP with a load-balancing loss.

Routing follows the Switch Transformer and GShard (Fedus et al. 2022, "Switch Transformers",
eqs. 1-2; Lepikhin et al. 2021): a bias-free linear router scores the E experts, a softmax over
all E gives probabilities p, each token goes to its K most probable experts, and the outputs of
those experts are summed weighted by their (not renormalised) probabilities, so the router is
trained by the language-modelling loss even with K = 1. With K = E every expert sees every token.
Sparsity is S = (E - K) / E (Abnar et al. 2025, "Parameters vs FLOPs").

Load balancing (Fedus et al. 2022, eq. 4, generalised to K experts per token):

    aux = E * sum_e f_e * P_e

with f_e the fraction of the N*K token-to-expert assignments that go to expert e and P_e the
mean router probability of e over the N tokens. It is 1 when routing is uniform and grows as it
concentrates; the trainer adds ``MoEConfig.aux_loss_coef`` times its mean over layers.

Dispatch (no Python loop over tokens): the N*K assignments are sorted by expert
(``argsort``), the tokens gathered in that order, each expert applied to its contiguous slice,
the slices scaled by their gates and added back to their tokens with ``index_add_``. Each token
passes through exactly K experts, so the matmul FLOPs are those of the active parameters. The
experts' slices are applied in one of two ways (``grouped_dispatch``):

- one grouped matmul per projection (``torch.nn.functional.grouped_mm``, slices delimited by
  the cumulative counts on the device): no host synchronisation and no loop over experts. Used
  in eager float32 on CPU, where it is exact and faster (``benchmarks/moe_dispatch.py``);
- a split into E slices (``split(counts.tolist())``, one host read of the E slice sizes per
  layer) and a loop over the E experts, everywhere else: torch's grouped matmul traces under
  ``torch.compile`` only in bfloat16 (its meta function refuses float32) and its CUDA kernels
  are not measured here.

Expert counts come from a comparison with ``arange(E)`` rather than ``bincount``, whose output
size depends on the data (a ``torch.compile`` graph break, and a host read on CUDA).

Shapes: ``n`` tokens (b * t flattened), ``e`` experts, ``k`` chosen experts per token, ``a``
assignments (n * k), ``d`` width, ``f`` expert hidden width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grouped_dispatch(x_ad: torch.Tensor, weight_edf: torch.Tensor) -> bool:
    """Whether the experts run as grouped matmuls (module docstring): eager float32 on CPU,
    with rows a whole number of 16-byte units as the kernel requires."""
    return (
        hasattr(F, "grouped_mm")
        and x_ad.device.type == "cpu"
        and x_ad.dtype == weight_edf.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and all(n * x_ad.element_size() % 16 == 0 for n in weight_edf.shape[1:])
    )


class MoE(nn.Module):
    """E routed GELU experts of hidden width f; each token uses its top K."""

    def __init__(
        self, d_model: int, d_ff: int, n_experts: int, top_k: int, *, std: float, out_std: float
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"moe: top_k={top_k} must be between 1 and n_experts={n_experts}")
        self.n_experts = n_experts
        self.top_k = top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        # Expert weights stacked (e, d, f) and (e, f, d); initialised like the dense MLP's up and
        # residual-output projections.
        self.up_edf = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        self.down_efd = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        nn.init.normal_(self.router.weight, std=std)
        nn.init.normal_(self.up_edf, std=std)
        nn.init.normal_(self.down_efd, std=out_std)
        self.aux_loss = torch.zeros(())  # load-balancing loss of the latest forward pass

    def route(self, x_nd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probabilities (n, e), gates (n, k), experts (n, k)) for tokens (n, d)."""
        probs_ne = self.router(x_nd).float().softmax(dim=-1)
        gate_nk, expert_nk = probs_ne.topk(self.top_k, dim=-1)
        return probs_ne, gate_nk, expert_nk

    def expert(self, e: int, x_nd: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` applied to tokens (n, d)."""
        return F.gelu(x_nd @ self.up_edf[e]) @ self.down_efd[e]

    def forward(self, x_btd: torch.Tensor) -> torch.Tensor:
        b, t, d = x_btd.shape
        x_nd = x_btd.reshape(b * t, d)
        probs_ne, gate_nk, expert_nk = self.route(x_nd)
        expert_a = expert_nk.reshape(-1)
        order_a = expert_a.argsort(stable=True)
        token_a = order_a // self.top_k  # token of each assignment, in expert order
        experts_e = torch.arange(self.n_experts, device=expert_a.device)
        counts_e = (expert_a[:, None] == experts_e).sum(dim=0)  # static size: no bincount
        x_ad = x_nd[token_a]
        # Every expert on its contiguous slice of x_ad, one of two ways (module docstring). Kept
        # inline: a graph break inside a helper would break its caller's graph as well.
        if grouped_dispatch(x_ad, self.up_edf):
            offs_e = counts_e.cumsum(0).to(torch.int32)  # end of each expert's slice
            h_af = F.gelu(F.grouped_mm(x_ad, self.up_edf, offs=offs_e))
            y_ad = F.grouped_mm(h_af, self.down_efd, offs=offs_e)
        else:
            # One host read of the E slice sizes per layer; the loop is over experts only.
            slices = x_ad.split(counts_e.tolist())
            y_ad = torch.cat([self.expert(e, x) for e, x in enumerate(slices)])
        y_ad = y_ad * gate_nk.reshape(-1)[order_a, None].to(y_ad.dtype)
        y_nd = torch.zeros_like(x_nd).index_add_(0, token_a, y_ad.to(x_nd.dtype))
        # Switch load-balancing loss: f_e from the hard assignments, P_e from the probabilities.
        f_e = counts_e.to(probs_ne.dtype) / expert_a.numel()
        self.aux_loss = self.n_experts * (f_e * probs_ne.mean(dim=0)).sum()
        return y_nd.view(b, t, d)


def moe_reference(moe: MoE, x_btd: torch.Tensor) -> torch.Tensor:
    """The same layer computed densely: every expert on every token, gates zero off the top K.

    A slow loop over experts used to check the sorted dispatch of ``MoE.forward``.
    """
    b, t, d = x_btd.shape
    x_nd = x_btd.reshape(b * t, d)
    probs_ne, gate_nk, expert_nk = moe.route(x_nd)
    gates_ne = torch.zeros_like(probs_ne).scatter(1, expert_nk, gate_nk)
    y_nd = torch.zeros_like(x_nd)
    for e in range(moe.n_experts):
        y_nd = y_nd + gates_ne[:, e, None].to(x_nd.dtype) * moe.expert(e, x_nd)
    return y_nd.view(b, t, d)
