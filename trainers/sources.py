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
    located without importing it.

Synthetic sources have a known entropy rate (``trainers.synthetic``):

``markov``
    A seeded first-order Markov chain over ``symbols`` byte values; its size, concentration and
    seed come from the domain's ``DomainConfig``.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig
from collections.abc import Callable
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
