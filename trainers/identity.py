"""What of a trainer configuration is a run's identity (the run key hashes it).

A run key (``orchestrator.grid.run_key``) is a hash of the run's grid point, seed and the
resolved trainer configuration as returned by ``config_identity``: every field of
``TrainerConfig``, except

* fields that say how a run executes, not what it trains (``compile``), never part of it;
* fields that only pace a run (``simulated.sleep_s``: how long a simulated run takes on the wall
  clock), always entered at one fixed value: the value run keys were first computed with, so
  that keys made before they were normalised stay the same, and a study resumed at another pace
  finds the runs it already finished;
* fields added after run keys were first computed, left out while they hold their default,
  so that a configuration which does not use them keeps the key it always had (a finished run
  stays recognised as finished). Setting one to anything else makes a different run.

and with one addition: the text of every domain whose source is an installed package that may
change it between versions (``trainers.sources.VERSIONED_SOURCES``: the mlflow_docs domain), as
``data_text: {domain: digest}``, whenever that text differs from the text run keys were first
computed on. Runs on the original text keep their keys; runs on any other text (an mlflow patch
release) are other runs, and never taken for finished ones. The digest is read on the machine
that expands the study, which should have the workers' package versions.

Add every new ``TrainerConfig`` field to ``NEUTRAL_DEFAULTS`` with its default, unless changing
every existing run key is intended.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from trainers.config import TrainerConfig

#: Key paths (under the trainer config) of fields that never enter a run's identity.
EXECUTION_ONLY: tuple[tuple[str, ...], ...] = (("compile",),)

#: Key path -> the value a pacing-only field always enters the identity with, whatever is set.
PACING_ONLY: dict[tuple[str, ...], object] = {("simulated", "sleep_s"): 0.0}

#: Key path -> default of fields left out of the identity while at that default.
NEUTRAL_DEFAULTS: dict[tuple[str, ...], object] = {
    ("optim", "reference_batch_size"): None,
    ("simulated", "supervised"): {},
    ("replay", "inputs"): [],
    ("replay", "losses"): [],
    ("replay", "group"): None,
}


def _parent(tree: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = tree
    for name in path[:-1]:
        node = node[name]
    return node


def config_identity(config: TrainerConfig) -> dict[str, Any]:
    """The trainer configuration as it enters a run key (see the module docstring)."""
    tree = asdict(config)
    for path in EXECUTION_ONLY:
        _parent(tree, path).pop(path[-1], None)
    for path, value in PACING_ONLY.items():
        _parent(tree, path)[path[-1]] = value
    for path, default in NEUTRAL_DEFAULTS.items():
        parent = _parent(tree, path)
        if path[-1] in parent and parent[path[-1]] == default:
            del parent[path[-1]]
    texts = changed_texts(config)
    if texts:
        tree["data_text"] = texts
    return tree


def changed_texts(config: TrainerConfig) -> dict[str, str]:
    """Domain name -> digest of its text, for versioned sources whose installed text is not the
    text their run keys were first computed on (see the module docstring)."""
    from trainers.sources import VERSIONED_SOURCES, source_text

    texts = {}
    # no domains configured means the default pair (stdlib, pydoc), neither of them versioned
    for name, domain in config.data.domains.items():
        reference = VERSIONED_SOURCES.get(domain.source)
        if reference is not None and (digest := source_text(domain).digest) != reference:
            texts[name] = digest
    return texts
