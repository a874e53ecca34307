"""The start board: a Ray actor each worker tells as its run starts, so the driver can tell runs
waiting for a node from runs training. Standard library only: the actor's own worker process
imports just this module, and starts in well under a second."""

from __future__ import annotations


class StartBoard:
    """Attempt tokens whose runs have started (a Ray actor asking for no CPUs)."""

    def __init__(self) -> None:
        self._started: set[str] = set()

    def mark(self, token: str) -> None:
        self._started.add(token)

    def started(self, tokens: list[str]) -> list[str]:
        """Those of ``tokens`` whose attempts have started."""
        return [t for t in tokens if t in self._started]
