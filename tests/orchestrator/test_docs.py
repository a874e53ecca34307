"""The README's study-key reference is generated from the typed configs and must be current."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.config import StudyConfig
from orchestrator.docs import BEGIN, END, reference, rows

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_key_reference_is_current() -> None:
    text = README.read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == reference(), "run: python -m orchestrator.docs README.md"


def test_reference_lists_every_field_with_its_comment() -> None:
    keys = {key: doc for key, _, _, doc in rows()}
    for f in dataclasses.fields(StudyConfig):
        assert f.name in keys
    assert "selection.target.budget" in keys and "trainer.optim.lr" in keys
    assert keys["grid.isoflop.span"].startswith("largest / smallest N")
    assert next(default for key, _, default, _ in rows() if key == "name") == "required"
