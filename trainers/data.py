"""Offline text domains as byte-level tokens, a seeded mixture batch sampler, held-out windows.

Sources (text every Python installation has, so runs never download anything):

``stdlib``
    The ``.py`` files of the Python standard library (``sysconfig.get_paths()["stdlib"]``),
    walked in sorted order, skipping ``site-packages``/``dist-packages`` (installed packages
    vary between machines), test directories and ``pydoc_data`` (prose, the other domain).
``pydoc``
    The English help topics in ``pydoc_data.topics.topics``, one document per topic.

A domain's documents are read up to ``MAX_DOMAIN_BYTES``: they are ordered by a stable hash of
their name and taken whole until the cap, so the selection is a deterministic sample of the whole
source rather than its alphabetical head. Each document then goes to the held-out split when a
second, independent stable hash of its name falls below ``heldout_fraction`` (document-level, so
no text is shared between the splits); at least one document is held out and one kept for
training. Documents are joined with a 0 byte as an end-of-document marker. Tokens are raw bytes
(vocabulary 256). Loaded domains are cached per process.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from trainers.config import DataConfig, DomainConfig

#: At most this many bytes of each source are read (about 0.1 s per domain).
MAX_DOMAIN_BYTES = 4 * 1024 * 1024

#: Directory names never read from the standard library.
_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__"}
)

_END_OF_DOCUMENT = b"\x00"


def _stdlib_documents() -> list[tuple[str, bytes | Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[tuple[str, bytes | Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath, name)
                # Paths, read lazily: only the capped selection is ever opened.
                docs.append((path.relative_to(root).as_posix(), path))
    return docs


def _pydoc_documents() -> list[tuple[str, bytes | Path]]:
    from pydoc_data.topics import topics

    return [(name, text.encode("utf-8")) for name, text in sorted(topics.items())]


#: source name -> function listing (document name, bytes or Path) in a stable order.
SOURCES: dict[str, Callable[[], list[tuple[str, bytes | Path]]]] = {
    "stdlib": _stdlib_documents,
    "pydoc": _pydoc_documents,
}

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


def domains_of(config: DataConfig) -> dict[str, DomainConfig]:
    """The configured domains in order, or the default {code: stdlib, prose: pydoc}."""
    return dict(config.domains) if config.domains else dict(DEFAULT_DOMAINS)


@functools.lru_cache(maxsize=16)
def load_domain(source: str, heldout_fraction: float) -> DomainText:
    """Read (once per process) and split one source; unknown sources raise ``ValueError``."""
    if source not in SOURCES:
        raise ValueError(
            f"data.domains.*.source: unknown source {source!r}; valid sources: {', '.join(SOURCES)}"
        )
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"data.heldout_fraction: must be in (0, 1), got {heldout_fraction}")
    listed = SOURCES[source]()
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
    )


def _tokens(docs: Sequence[tuple[str, bytes]]) -> torch.Tensor:
    joined = _END_OF_DOCUMENT.join(data for _, data in docs) + _END_OF_DOCUMENT
    return torch.frombuffer(bytearray(joined), dtype=torch.uint8)


def load_domains(config: DataConfig) -> dict[str, DomainText]:
    """Every configured domain, by name, in domain order."""
    return {
        name: load_domain(domain.source, config.heldout_fraction)
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


class MixtureSampler:
    """Random training windows of ``seq_len + 1`` bytes, domains mixed by weight.

    How many of a batch's ``batch_size`` sequences each domain gets is decided by systematic
    sampling: with cumulative targets ``c_i = batch_size * (w_1 + ... + w_i)`` and one uniform
    ``u`` per batch, domain i gets ``floor(c_i + u) - floor(c_{i-1} + u)`` sequences. That count
    is ``floor(w_i * B)`` or one more, with probability equal to the fractional part, so the
    expected share of every domain is exactly ``w_i`` and no batch deviates by more than one
    sequence. Window starts are uniform over each domain's training stream. All randomness comes
    from the given ``torch.Generator``.
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
        cumulative, acc = [], 0.0
        for w in weights:
            acc += w * batch_size
            cumulative.append(acc)
        self._cumulative = cumulative
        self._offsets_t = torch.arange(seq_len + 1)

    def counts(self) -> list[int]:
        """Sequences per domain for the next batch (systematic sampling, see the class doc)."""
        u = float(torch.rand((), generator=self.generator))
        counts, previous = [], 0
        for c in self._cumulative:
            # min(): float rounding in the cumulative sum must never exceed the batch.
            edge = min(int(c + u), self.batch_size)
            counts.append(edge - previous)
            previous = edge
        counts[-1] += self.batch_size - previous
        return counts

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
