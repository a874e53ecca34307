"""Every exported document satisfies the published JSON Schema (laws/export.schema.json): the
schema is strict (no unknown keys), so a field added to the export without documenting it fails
here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import laws
from laws.bootstrap import bootstrap, joint_bootstrap
from tests.laws.test_optimal import law_fit
from tests.laws.test_optimal_intervals import AT, DOMAIN_A, DOMAIN_B, mixture_runs, sparsity_fits  # noqa: F401

DATA = Path(__file__).resolve().parents[1] / "data" / "epoch_chinchilla.csv"


def _valid(document: dict) -> None:
    jsonschema.validate(json.loads(json.dumps(document)), laws.document_schema())


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(laws.document_schema())
    assert laws.document_schema()["properties"]["schema_version"]["const"] == laws.SCHEMA_VERSION


def test_a_chinchilla_document_with_recipes_and_bootstrap_is_valid() -> None:
    rng = np.random.default_rng(0)
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e9, 5), np.geomspace(1e9, 1e11, 5)))
    law = laws.get_law("chinchilla")
    truth = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}
    y = law.predict(truth, N=n, D=d) * np.exp(rng.normal(0, 0.005, n.size))
    fit = laws.fit(law, {"N": n, "D": d}, y)
    boot = bootstrap(fit, {"N": n, "D": d}, y, n_resamples=30, seed=0)
    document = laws.export_document([fit], budgets=[1e21, 1e22], bootstrap=[boot])
    _valid(document)
    assert document["laws"][0]["compute_optimal"][0]["N_opt_interval"] is not None
    # the strict schema catches a key nobody documented
    document["laws"][0]["surprise"] = 1
    with pytest.raises(jsonschema.ValidationError, match="surprise"):
        _valid(document)


def test_sparsity_and_mixture_documents_are_valid(sparsity_fits) -> None:  # noqa: F811
    fit, x, loss = sparsity_fits[1]
    boot = bootstrap(fit, x, loss, n_resamples=10, seed=0)
    _valid(laws.export_document([fit], budgets=[1e20], bootstrap=[boot]))
    _, x, losses = mixture_runs(1, truths=(DOMAIN_A, DOMAIN_B))
    fits = [law_fit("mixture_additive", t) for t in (DOMAIN_A, DOMAIN_B)]
    boots = joint_bootstrap(fits, x, losses, n_resamples=6, seed=3, grid_starts=0, options=laws.NewtonOptions(max_iter=5))
    document = laws.export_document(fits, bootstrap=boots, mixture_at=[AT])
    _valid(document)
    assert document["optimal_mixture"][0]["weights"]


def test_the_fit_command_writes_a_valid_document() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "fit", str(DATA), "--law", "chinchilla",
         "--columns", "N=Model Size,C=Training FLOP,loss=loss", "--where", "loss<=3.44"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr
    _valid(json.loads(proc.stdout))
