"""Where each text domain's documents come from: nothing is ever downloaded.

Every source lists ``(document name, bytes or Path)`` in a stable order; ``trainers.data`` caps,
splits and tokenises them. Real sources are text every installation of the project has:

``stdlib``
    The ``.py`` files of the Python standard library (``sysconfig.get_paths()["stdlib"]``),
    walked in sorted order, skipping ``site-packages``/``dist-packages`` (installed packages
    vary between machines), test directories and ``pydoc_data`` (prose, another domain).
``pydoc``
    The English help topics in ``pydoc_data.topics.topics``, one document per topic.
``mlflow_docs``
    The Markdown files shipped inside the ``mlflow`` package (its assistant skills and command
    guides: English technical prose with code blocks, about 0.3 MB). mlflow is a pinned
    dependency of the project, so every ``make setup`` installs the same text. The package is
    located without importing it. A patch release within the pin may still change the text, so
    the text is part of a run's identity (``VERSIONED_SOURCES``, ``trainers.identity``).

Synthetic sources have a known entropy rate (``trainers.synthetic``):

``markov``
    A seeded first-order Markov chain over ``symbols`` byte values; its size, concentration and
    seed come from the domain's ``DomainConfig``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trainers.config import DomainConfig
from trainers.synthetic import markov_chain, markov_documents

#: A source's documents: (stable name, content or a path read lazily).
Documents = list[tuple[str, bytes | Path]]

#: Directory names never read from the standard library.
_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data", "__pycache__"}
)


def _walk(root: Path, suffix: str, excluded: frozenset[str] = frozenset()) -> Documents:
    docs: Documents = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in excluded)
        for name in sorted(filenames):
            if name.endswith(suffix):
                path = Path(dirpath, name)
                # Paths, read lazily: only the capped selection is ever opened.
                docs.append((path.relative_to(root).as_posix(), path))
    return docs


def stdlib_documents(domain: DomainConfig) -> Documents:
    """The standard library's ``.py`` files (see the module docstring)."""
    return _walk(Path(sysconfig.get_paths()["stdlib"]), ".py", _EXCLUDED_DIRS)


def pydoc_documents(domain: DomainConfig) -> Documents:
    """One document per ``pydoc_data`` help topic."""
    from pydoc_data.topics import topics

    return [(name, text.encode("utf-8")) for name, text in sorted(topics.items())]


def mlflow_docs_documents(domain: DomainConfig) -> Documents:
    """The Markdown files inside the installed ``mlflow`` package."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "data.domains.*.source: 'mlflow_docs' needs the mlflow package (run `make setup`)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return _walk(root, ".md", frozenset({"node_modules", "__pycache__"}))


def markov_source(domain: DomainConfig) -> Documents:
    """Documents of the seeded Markov chain the domain configures."""
    chain = markov_chain(domain.symbols, domain.concentration, domain.markov_seed)
    docs: Documents = [*markov_documents(chain, domain.synthetic_bytes, domain.markov_seed)]
    return docs


def entropy_rate(domain: DomainConfig) -> float | None:
    """The source's entropy rate in nats/byte when it is known (synthetic sources), else None."""
    if domain.source == "markov":
        return markov_chain(domain.symbols, domain.concentration, domain.markov_seed).entropy_rate
    return None


#: source name -> function listing its documents in a stable order.
SOURCES: dict[str, Callable[[DomainConfig], Documents]] = {
    "stdlib": stdlib_documents,
    "pydoc": pydoc_documents,
    "mlflow_docs": mlflow_docs_documents,
    "markov": markov_source,
}


#: Sources whose text comes from an installed package that may change it between versions ->
#: the digest (``source_text``) of the text run keys were first computed on (mlflow 3.17.2: 38
#: documents, 317,752 bytes). Runs on other text get other run keys (``trainers.identity``). Never
#: edit a digest here: runs keyed before the edit would be taken for runs on the new text.
VERSIONED_SOURCES: dict[str, str] = {
    "mlflow_docs": "22b08012f37ae73358fa69deddb16f74",
}


@dataclass(frozen=True, kw_only=True)
class SourceText:
    """What a source's text is: its documents, their total size and a digest of them all."""

    documents: int
    bytes: int
    digest: str  # blake2b (128 bits, hex) of every document's name and content, in listing order


@functools.lru_cache(maxsize=16)
def source_text(domain: DomainConfig) -> SourceText:
    """The identity of the text ``domain``'s source lists (all of it, before the per-domain
    cap and the held-out split, which are functions of it and of the configuration)."""
    digest = hashlib.blake2b(digest_size=16)
    total = 0
    documents = SOURCES[domain.source](domain)
    for name, content in documents:
        data = content.read_bytes() if isinstance(content, Path) else content
        encoded = name.encode("utf-8")
        # lengths first, so that no two different listings hash the same bytes
        digest.update(len(encoded).to_bytes(8, "big") + encoded + len(data).to_bytes(8, "big") + data)
        total += len(data)
    return SourceText(documents=len(documents), bytes=total, digest=digest.hexdigest())
