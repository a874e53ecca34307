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


def test_an_exported_law_loads_and_answers_without_mlflow_ray_or_the_orchestrator(tmp_path: Path) -> None:
    """In a fresh interpreter: load a document, predict, take the recipes; none of the heavy
    platform packages may be imported for it."""
    law = laws.get_law("chinchilla")
    truth = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e7, 1e9, 4), np.geomspace(1e9, 1e11, 4)))
    fit = laws.fit(law, {"N": n, "D": d}, law.predict(truth, N=n, D=d))
    path = tmp_path / "law.json"
    path.write_text(json.dumps(laws.export_document([fit], budgets=[1e21])))
    script = f"""
import json, sys
import laws
(fit,) = laws.load_document(json.load(open({str(path)!r})))
print(fit.predict(N=1e9, D=2e10))
print(laws.compute_optimal(fit, [1e22])[0].N_opt)
heavy = sorted(m for m in ("mlflow", "ray", "optuna", "orchestrator", "matplotlib") if m in sys.modules)
print(json.dumps(heavy))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    predicted, n_opt, heavy = proc.stdout.strip().splitlines()
    assert float(predicted) == pytest.approx(float(law.predict(truth, N=1e9, D=2e10)), rel=1e-6)
    assert float(n_opt) > 0
    assert json.loads(heavy) == []
