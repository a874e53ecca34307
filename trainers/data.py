"""Text domains as byte-level tokens, a seeded mixture batch sampler, held-out windows.

Documents come from the sources of ``trainers.sources`` (real offline text and synthetic text of
known entropy). A domain's documents are read up to ``MAX_DOMAIN_BYTES``: they are ordered by a
stable hash of their name and taken whole until the cap, so the selection is a deterministic
sample of the whole source rather than its alphabetical head. Each document then goes to the
held-out split when a second, independent stable hash of its name falls below
``heldout_fraction`` (document-level, so no text is shared between the splits); at least one
document is held out and one kept for training. Documents are joined with a 0 byte as an
end-of-document marker. Tokens are raw bytes (vocabulary 256). Loaded domains are cached per
process.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainers.config import DataConfig, DomainConfig
from trainers.sources import SOURCES, entropy_rate

#: At most this many bytes of each source are read (about 0.1 s per domain).
MAX_DOMAIN_BYTES = 4 * 1024 * 1024

_END_OF_DOCUMENT = b"\x00"

DEFAULT_DOMAINS: dict[str, DomainConfig] = {
    "code": DomainConfig(source="stdlib"),
    "prose": DomainConfig(source="pydoc"),
}


def _unit_hash(salt: str, name: str) -> float:
    """A stable hash of ``name`` mapped to [0, 1) (blake2b: identical on every machine and run)."""
    digest = hashlib.blake2b(f"{salt}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class DomainText:
    """The byte tokens of one domain's two splits (uint8 tensors) and their document names."""

    source: str
    train: torch.Tensor
    heldout: torch.Tensor
    train_docs: tuple[str, ...]
    heldout_docs: tuple[str, ...]
    entropy_rate: float | None = None  # nats/byte of the source when known (synthetic sources)


def domains_of(config: DataConfig) -> dict[str, DomainConfig]:
    """The configured domains in order, or the default {code: stdlib, prose: pydoc}."""
    return dict(config.domains) if config.domains else dict(DEFAULT_DOMAINS)


@functools.lru_cache(maxsize=16)
def load_domain(domain: DomainConfig | str, heldout_fraction: float) -> DomainText:
    """Read (once per process) and split one domain, given as a config or a source name.

    Unknown sources raise ``ValueError`` listing the valid ones.
    """
    if isinstance(domain, str):
        domain = DomainConfig(source=domain)
    source = domain.source
    if source not in SOURCES:
        raise ValueError(
            f"data.domains.*.source: unknown source {source!r}; valid sources: {', '.join(SOURCES)}"
        )
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"data.heldout_fraction: must be in (0, 1), got {heldout_fraction}")
    listed = SOURCES[source](domain)
    selected: list[tuple[str, bytes]] = []
    budget = MAX_DOMAIN_BYTES
    for name, content in sorted(listed, key=lambda doc: _unit_hash("select", doc[0])):
        size = content.stat().st_size if isinstance(content, Path) else len(content)
        if size > budget:
            continue  # smaller documents further down the order may still fit
        data = content.read_bytes() if isinstance(content, Path) else content
        selected.append((name, data))
        budget -= len(data)
    selected.sort()  # split membership is by hash; concatenation order by name
    held = [doc for doc in selected if _unit_hash("split", doc[0]) < heldout_fraction]
    if not held:  # guarantee a held-out set: the document with the smallest split hash
        held = [min(selected, key=lambda doc: _unit_hash("split", doc[0]))]
    held_names = {name for name, _ in held}
    train = [doc for doc in selected if doc[0] not in held_names]
    if not train:
        raise ValueError(f"data: source {source!r} has too few documents to split")
    return DomainText(
        source=source,
        train=_tokens(train),
        heldout=_tokens(held),
        train_docs=tuple(name for name, _ in train),
        heldout_docs=tuple(name for name, _ in held),
        entropy_rate=entropy_rate(domain),
    )


def _tokens(docs: Sequence[tuple[str, bytes]]) -> torch.Tensor:
    joined = _END_OF_DOCUMENT.join(data for _, data in docs) + _END_OF_DOCUMENT
    return torch.frombuffer(bytearray(joined), dtype=torch.uint8)


def load_domains(config: DataConfig) -> dict[str, DomainText]:
    """Every configured domain, by name, in domain order."""
    return {
        name: load_domain(domain, config.heldout_fraction)
        for name, domain in domains_of(config).items()
    }


def mixture_weights(mixture: Sequence[float], n_domains: int) -> tuple[float, ...]:
    """Normalised domain weights; ``()`` means uniform. Raises ``ValueError`` when malformed."""
    if not mixture:
        return tuple(1.0 / n_domains for _ in range(n_domains))
    if len(mixture) != n_domains:
        raise ValueError(
            f"mixture: {tuple(mixture)} has {len(mixture)} weights for {n_domains} domains"
        )
    if any(not w >= 0.0 for w in mixture) or sum(mixture) <= 0.0:
        raise ValueError(f"mixture: weights must be >= 0 with a positive sum, got {tuple(mixture)}")
    total = float(sum(mixture))
    return tuple(float(w) / total for w in mixture)


def simplex_grid(n_domains: int, step: float, min_weight: float = 0.0) -> list[tuple[float, ...]]:
    """Every mixture on the simplex grid of spacing ``step`` with each weight >= ``min_weight``.

    Weights are ``min_weight + j * step`` with whole ``j >= 0``, summing to 1, listed in
    lexicographic order (Shukor et al. 2025 train on such a grid with every h_i >= 0.1). The
    free mass ``1 - n_domains * min_weight`` must be a whole number of steps.
    """
    if n_domains < 1:
        raise ValueError(f"mixture: need at least one domain, got {n_domains}")
    if not step > 0 or min_weight < 0:
        raise ValueError(f"mixture: step must be > 0 and min_weight >= 0, got {step}, {min_weight}")
    free = 1.0 - n_domains * min_weight
    units = round(free / step)
    if free < -1e-9 or abs(units * step - free) > 1e-9:
        raise ValueError(
            f"mixture: 1 - {n_domains} * min_weight = {free:g} is not a whole number of steps "
            f"of {step:g}"
        )

    def splits(parts: int, total: int) -> Iterator[tuple[int, ...]]:
        if parts == 1:
            yield (total,)
            return
        for first in range(total, -1, -1):
            for rest in splits(parts - 1, total - first):
                yield (first, *rest)

    return [
        tuple(round(min_weight + j * step, 12) for j in split) for split in splits(n_domains, units)
    ]


class MixtureSampler:
    """Random training windows of ``seq_len + 1`` bytes, domains mixed in exact proportions.

    Which domain each sequence comes from is fixed by systematic sampling over the whole run
    (Madow 1949; the same rule as systematic resampling in particle filters): with one uniform
    ``u`` drawn when the sampler is built and cumulative targets ``T_i(s) = s * B * (w_1 + ... +
    w_i)`` after ``s`` batches of ``B`` sequences, the first ``s`` batches hold
    ``floor(T_i(s) + u)`` sequences of domains ``1 .. i``. Hence after every batch each domain's
    total differs from ``w_i * B * s`` by less than one sequence (it is a difference of two such
    floors, each off its target by an amount in ``(u - 1, u]``), so the proportions of the run's tokens are the requested weights
    up to one sequence per domain, whatever the run's length; every batch has exactly ``B``
    sequences and a domain's share of one batch is within two sequences of ``w_i * B``. Window
    starts are uniform over each domain's training stream. All randomness comes from the given
    ``torch.Generator``; ``state_dict``/``load_state_dict`` save and restore the position in the
    stream, so a resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        domains: Sequence[DomainText],
        weights: Sequence[float],
        *,
        batch_size: int,
        seq_len: int,
        generator: torch.Generator,
    ) -> None:
        if len(domains) != len(weights):
            raise ValueError(f"mixture: {len(weights)} weights for {len(domains)} domains")
        for domain in domains:
            if domain.train.numel() < seq_len + 1:
                raise ValueError(f"seq_len: {seq_len} is longer than source {domain.source!r}")
        self.streams = [domain.train for domain in domains]
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.generator = generator
        total = float(sum(weights))
        cumulative, acc = [], 0.0
        for w in weights:
            acc += w / total
            cumulative.append(acc)
        cumulative[-1] = 1.0  # the last edge is exact, so every batch has batch_size sequences
        self._cumulative = cumulative
        self._u = float(torch.rand((), generator=generator))
        self.batches = 0  # batches drawn so far
        self._offsets_t = torch.arange(seq_len + 1)

    def _edges(self, batches: int) -> list[int]:
        """Sequences of domains 1 .. i among the first ``batches`` batches, for every i."""
        n = batches * self.batch_size
        return [min(int(c * n + self._u), n) for c in self._cumulative]

    def counts(self) -> list[int]:
        """Sequences per domain in the next batch (advances the sampler by one batch)."""
        before, after = self._edges(self.batches), self._edges(self.batches + 1)
        self.batches += 1
        # Sequences of domains 1 .. i in this batch, then differences between neighbours.
        upto = [a - b for a, b in zip(after, before, strict=True)]
        return [n - m for n, m in zip(upto, [0, *upto[:-1]], strict=True)]

    def sample(self) -> tuple[torch.Tensor, list[int]]:
        """One batch of windows (b, t + 1) as int64, and the per-domain counts in batch order."""
        counts = self.counts()
        parts = []
        for stream, n in zip(self.streams, counts, strict=True):
            if n:
                high = stream.numel() - self.seq_len
                starts_b = torch.randint(0, high, (n,), generator=self.generator)
                parts.append(stream[starts_b[:, None] + self._offsets_t])
        return torch.cat(parts).long(), counts

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (inputs_bt, targets_bt) batches."""
        while True:
            window_bt, _ = self.sample()
            yield window_bt[:, :-1], window_bt[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        """The sampler's position: batches drawn, the systematic offset and the generator state."""
        return {"batches": self.batches, "u": self._u, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict`` taken from a sampler with the same domains and weights."""
        self.batches = int(state["batches"])
        self._u = float(state["u"])
        self.generator.set_state(state["rng"])


def eval_windows(domain: DomainText, *, eval_tokens: int, seq_len: int) -> torch.Tensor:
    """Fixed held-out windows (n, seq_len + 1) as int64 scoring about ``eval_tokens`` tokens.

    ``ceil(eval_tokens / seq_len)`` windows start at evenly spaced offsets over the held-out
    stream, so the whole split is sampled; they overlap only when the split is shorter than the
    tokens asked for. Identical on every call.
    """
    heldout = domain.heldout
    span = heldout.numel() - (seq_len + 1)
    if span < 0:
        raise ValueError(
            f"seq_len: {seq_len} is longer than the held-out split of source {domain.source!r} "
            f"({heldout.numel()} bytes); raise data.heldout_fraction"
        )
    n = max(1, -(-eval_tokens // seq_len))
    starts_n = (
        torch.linspace(0, span, n).floor().long() if n > 1 else torch.zeros(1, dtype=torch.long)
    )
    return heldout[starts_n[:, None] + torch.arange(seq_len + 1)].long()
