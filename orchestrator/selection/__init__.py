"""Choosing which runs to train: the full grid, or a budgeted subset picked online (Optuna ask/tell
over the grid's candidates with an information-per-FLOP sampler, or random/cheapest baselines)."""

from orchestrator.selection.criteria import (
    Target,
    greedy_information,
    space_filling,
    target_gradients,
)
from orchestrator.selection.selector import (
    Selector,
    check_selection_budget,
    journal_storage,
    selection_budget,
    target_widths,
)

__all__ = [
    "Selector",
    "Target",
    "check_selection_budget",
    "greedy_information",
    "journal_storage",
    "selection_budget",
    "space_filling",
    "target_gradients",
    "target_widths",
]
