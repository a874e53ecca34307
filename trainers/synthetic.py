"""A synthetic text domain of known entropy: a seeded first-order Markov chain over bytes.

The chain has ``symbols`` states, written as the bytes ``1 .. symbols`` (byte 0 is the
end-of-document marker of ``trainers.data``). Each row of the transition matrix P is drawn from a
symmetric Dirichlet distribution with the given concentration (``numpy.random.default_rng(seed)``):
a low concentration gives peaked rows and a low entropy rate, a high one approaches the uniform
chain's ``log(symbols)``.

Every document is an independent chain of ``DOC_BYTES`` symbols whose first state is drawn from
the stationary distribution pi, so every position of every document is distributed as pi. The
entropy rate of a stationary Markov chain is (Cover & Thomas, "Elements of Information Theory",
2nd ed., theorem 4.2.4)

    H = - sum_i pi_i sum_j P_ij log P_ij        (nats per symbol)

and it is the lowest expected loss any next-byte predictor can reach on the held-out split (up
to the first symbol of each document, drawn from pi, and the end-of-document markers, together
about 1 / DOC_BYTES of the tokens). It is the irreducible term E a fitted law should recover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Symbols per generated document.
DOC_BYTES = 4096

#: Chains generated side by side per vectorised step (bounds the working memory).
_CHAINS_PER_BLOCK = 256


@dataclass(frozen=True)
class MarkovChain:
    """Transition matrix (s, s), its stationary distribution (s,) and entropy rate (nats)."""

    transition: np.ndarray
    stationary: np.ndarray
    entropy_rate: float


def _entropy_rows(p_ss: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row, with 0 log 0 = 0."""
    logs = np.log(np.where(p_ss > 0, p_ss, 1.0))
    return -(p_ss * logs).sum(axis=1)


def markov_chain(symbols: int, concentration: float, seed: int) -> MarkovChain:
    """The chain of ``symbols`` states with Dirichlet(concentration) rows drawn from ``seed``."""
    if not 2 <= symbols <= 255:
        raise ValueError(f"data.domains.*.symbols: must be in [2, 255], got {symbols}")
    if not concentration > 0:
        raise ValueError(f"data.domains.*.concentration: must be > 0, got {concentration}")
    rng = np.random.default_rng(seed)
    p_ss = rng.dirichlet(np.full(symbols, concentration), size=symbols)
    # Rows drawn with a tiny concentration can underflow to all-zero but one entry; mixing in a
    # 1e-6 share of the uniform row keeps the chain irreducible, so pi is unique.
    p_ss = (1 - 1e-6) * p_ss + 1e-6 / symbols
    p_ss /= p_ss.sum(axis=1, keepdims=True)
    # pi P = pi: the left eigenvector for eigenvalue 1, from the augmented least-squares system.
    a = np.vstack([p_ss.T - np.eye(symbols), np.ones((1, symbols))])
    b = np.zeros(symbols + 1)
    b[-1] = 1.0
    pi_s = np.linalg.lstsq(a, b, rcond=None)[0]
    pi_s = np.clip(pi_s, 0.0, None)
    pi_s /= pi_s.sum()
    return MarkovChain(
        transition=p_ss, stationary=pi_s, entropy_rate=float(pi_s @ _entropy_rows(p_ss))
    )


def markov_documents(chain: MarkovChain, n_bytes: int, seed: int) -> list[tuple[str, bytes]]:
    """``n_bytes // DOC_BYTES`` (at least 2) independent documents sampled from ``chain``.

    Chains advance together, one vectorised inverse-CDF draw per position, so generation costs
    ``DOC_BYTES`` numpy steps per block of documents (no Python loop over tokens).
    """
    n_docs = max(2, n_bytes // DOC_BYTES)
    # A stream independent of the matrix's (same seed, different spawn key).
    rng = np.random.default_rng([seed, 1])
    cdf_ss = np.cumsum(chain.transition, axis=1)
    cdf_ss[:, -1] = 1.0  # no draw may fall past the last state through rounding
    pi_cdf = np.cumsum(chain.stationary)
    pi_cdf[-1] = 1.0
    docs: list[tuple[str, bytes]] = []
    for first in range(0, n_docs, _CHAINS_PER_BLOCK):
        n = min(_CHAINS_PER_BLOCK, n_docs - first)
        u_nt = rng.random((n, DOC_BYTES))
        states_nt = np.empty((n, DOC_BYTES), dtype=np.int64)
        states_nt[:, 0] = np.searchsorted(pi_cdf, u_nt[:, 0], side="right")
        for t in range(1, DOC_BYTES):
            rows_ns = cdf_ss[states_nt[:, t - 1]]
            states_nt[:, t] = (u_nt[:, t, None] >= rows_ns).sum(axis=1)
        text_nt = (states_nt + 1).astype(np.uint8)  # bytes 1 .. symbols
        docs.extend((f"doc-{first + i:06d}", text_nt[i].tobytes()) for i in range(n))
    return docs
