"""The malformed-study corpus through the command line: exit code 2, one message naming the key,
and nothing written (no tracking store, no selection journal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from tests.orchestrator.test_loading import BAD_STUDIES

_SIM = {"name": "s", "trainer": {"kind": "simulated"}, "grid": {"N": [1e6, 1e7], "D": [1e8]}}


def _sel(**selection) -> dict:
    return {**_SIM, "selection": selection}


DENSE_TINY = {"name": "s", "trainer": {"seq_len": 64, "batch_size": 16}, "grid": {"isoflop": {"budgets": [1e5]}}}

MORE = [
    ("isoflop and N together", {**_SIM, "grid": {"N": [1e6], "D": [1e8], "isoflop": {"budgets": [1e18]}}}, "grid.isoflop"),
    ("points per budget zero", {**_SIM, "grid": {"isoflop": {"budgets": [1e18], "points_per_budget": 0}}},
     "grid.isoflop.points_per_budget"),
    ("span below one", {**_SIM, "grid": {"isoflop": {"budgets": [1e18], "span": 0.5}}}, "grid.isoflop.span"),
    ("zero replicates", {**_SIM, "grid": {"N": [1e6], "D": [1e8], "replicates": 0}}, "grid.replicates"),
    ("zero cpus per run", {**_SIM, "resources": {"cpus_per_run": 0}}, "resources.cpus_per_run"),
    ("zero cluster cpus", {**_SIM, "cluster": {"num_cpus": 0}}, "cluster.num_cpus"),
    ("negative concurrency", {**_SIM, "resources": {"max_concurrent": -2}}, "resources.max_concurrent"),
    ("negative pending watchdog", {**_SIM, "resources": {"pending_warn_s": -1}}, "resources.pending_warn_s"),
    ("negative GPU memory", {**_SIM, "resources": {"gpu_memory_mb": -1}}, "resources.gpu_memory_mb"),
    ("zero workers per run", {**DENSE_TINY, "resources": {"workers_per_run": "0"}}, "resources.workers_per_run"),
    ("workers that do not split the batch", {**DENSE_TINY, "resources": {"workers_per_run": "3"}},
     "resources.workers_per_run"),
    ("workers for simulated runs", {**_SIM, "resources": {"workers_per_run": "2"}}, "resources.workers_per_run"),
    ("fractional GPUs above one", {**DENSE_TINY, "resources": {"gpus_per_run": "1.5"}}, "resources.gpus_per_run"),
    ("simulated truth without parameters", {**_SIM, "trainer": {"kind": "simulated", "simulated": {"law": "sparsity"}}},
     "trainer.simulated.params"),
    ("slash in name", {**_SIM, "name": "a/b"}, "name"),
    ("budget too small for one step", DENSE_TINY, "grid.isoflop.budgets[0]"),
    ("unknown selection key", _sel(mode="active", budget_fraction=0.5, targett={}), "selection.targett"),
    ("budget below the cheapest run", _sel(mode="random", budget_flops=1.0), "selection.budget_flops"),
    ("budget in grid mode", _sel(mode="grid", budget_flops=1e18), "selection.budget_flops"),
    ("custom law of an input no run records", {**_SIM, "laws": [{"family": "custom", "expression": "E + A / Q**alpha",
     "inputs": ["Q"], "params": {"E": [1.0], "A": [100.0], "alpha": [0.3]}}]}, "laws[0].inputs"),
    ("unknown tracking scheme", {**_SIM, "tracking": {"uri": "nosuch://x"}}, "tracking.uri"),
    ("tracking URI without a scheme", {**_SIM, "tracking": {"uri": "mlflow.db"}}, "tracking.uri"),
    ("tracking server that does not answer", {**_SIM, "tracking": {"uri": "http://127.0.0.1:1"}}, "tracking.uri"),
    ("export budget zero", {**_SIM, "export": {"budgets": [1e20, 0]}}, "export.budgets[1]"),
    ("export budget negative", {**_SIM, "export": {"budgets": [-1e20]}}, "export.budgets[0]"),
    ("simulated truth outside its law", {**_SIM, "trainer": {"kind": "simulated", "simulated": {
        "params": {"E": -1.0, "A": 1.0, "B": 1.0, "alpha": 0.3, "beta": 0.3}}}}, "trainer.simulated.params.E"),
    ("budget fraction below the cheapest run",
     _sel(mode="active", budget_fraction=1e-6, target={"budget": 1e20}), "selection.budget_fraction"),
    ("selection without budget", _sel(mode="random"), "selection.budget_flops"),
    ("selection budget fraction zero", _sel(mode="random", budget_fraction=0.0), "selection.budget_fraction"),
    ("selection two budgets", _sel(mode="random", budget_flops=1e18, budget_fraction=0.5), "selection.budget_fraction"),
    ("active without target", _sel(mode="active", budget_fraction=0.5), "selection.target"),
    ("target quantity unknown", _sel(mode="active", budget_fraction=0.5, target={"budget": 1e21, "quantities": ["ppl"]}),
     "selection.target.quantities[0]"),
    ("target point wrong inputs", _sel(mode="active", budget_fraction=0.5, target={"points": [{"N": 1e9, "X": 1}]}),
     "selection.target.points[0]"),
    ("target point negative", _sel(mode="active", budget_fraction=0.5, target={"points": [{"N": 1e9, "D": -1}]}),
     "selection.target.points[0].D"),
    ("selection law not fitted", _sel(mode="active", budget_fraction=0.5, law="chinchilla_gamma", target={"budget": 1e21}),
     "selection.law"),
    ("refit every zero", _sel(refit_every=0), "selection.refit_every"),
    ("negative misfit prior", _sel(mode="active", budget_fraction=0.5, misfit_prior=-0.02, target={"budget": 1e21}),
     "selection.misfit_prior"),
    ("discrepancy not a boolean", _sel(mode="active", budget_fraction=0.5, discrepancy="maybe", target={"budget": 1e21}),
     "selection.discrepancy"),
    ("bad selection mode", _sel(mode="bayes"), "selection.mode"),
    ("unknown data source", {**DENSE_TINY, "trainer": {"data": {"domains": {"code": {"source": "nowhere"}}}}},
     "trainer.data.domains.code.source"),
    ("markov alphabet too large",
     {**DENSE_TINY, "trainer": {"data": {"domains": {"m": {"source": "markov", "symbols": 300}}}}},
     "trainer.data.domains.m.symbols"),
    ("replay table missing", {"name": "r", "trainer": {"kind": "replay", "replay": {"path": "/nonexistent/runs.csv"}}},
     "trainer.replay.path"),
    ("custom law calls a function",
     {**_SIM, "laws": [{"family": "custom", "name": "evil", "expression": "__import__('os').getcwd() + N",
                        "inputs": ["N"], "params": {"E": [1, 2]}}]},
     "laws[0].expression"),
    ("teachers from a study that is not there",
     {"name": "st", "trainer": {"kind": "distill"}, "grid": {"N": [3e4], "D": [2e6],
                                                             "teachers": {"N": [6e4], "D": [4e6], "from_studies": ["nope"]}}},
     "grid.teachers.from_studies"),
    # budgeted selection chooses students and cooldown branches, not finetuning runs (yet)
    ("selection over finetuning runs",
     {"name": "ft", "trainer": {"kind": "dense"},
      "grid": {"N": [1.2e4], "D": [4e3], "finetune": {"domain": "prose", "pretrain_tokens_per_param": 2}},
      "laws": [{"family": "forgetting", "loss": "pretrain_loss"}], "selection": {"mode": "random", "budget_fraction": 0.5}},
     "selection.mode"),
    ("selection of students by the teachers' law",
     {"name": "st", "trainer": {"kind": "distill"}, "grid": {"N": [3e4], "D": [2e6], "teachers": {"N": [6e4], "D": [4e6]}},
      "laws": [{"family": "chinchilla", "name": "supervised", "runs": "teacher"}, {"family": "distillation", "supervised": "supervised"}],
      "selection": {"mode": "random", "budget_fraction": 0.5}},
     "selection.law"),
    ("simulated distillation truth without its supervised law",
     {"name": "sd", "trainer": {"kind": "simulated", "simulated": {"law": "distillation", "params": {
         "A": 2243.0, "B": 24181.0, "alpha": 0.321, "beta": 0.637, "gamma": 0.764, "c0": 2.549, "c1": 522.6, "f1": 0.09, "d1": 1.315}}},
      "grid": {"N": [1e8], "D": [1e9], "teachers": {"N": [1e8], "D": [2e9]}}, "laws": [{"family": "distillation"}]},
     "trainer.simulated.supervised"),
    ("negative flush interval", {**_SIM, "tracking": {"flush_every_s": -1}}, "tracking.flush_every_s"),
    # Ray would retry these addresses for ever: refused before anything starts
    ("cluster address where nothing listens", {**_SIM, "cluster": {"address": "127.0.0.1:1"}}, "cluster.address"),
    ("cluster address without a port", {**_SIM, "cluster": {"address": "headnode"}}, "cluster.address"),
    ("negative bootstrap", {**_SIM, "export": {"bootstrap": -5}}, "export.bootstrap"),
    ("too few bootstrap resamples for an interval", {**_SIM, "export": {"bootstrap": 5}}, "export.bootstrap"),
    ("teachers from this very study",
     {"name": "st", "trainer": {"kind": "distill"}, "grid": {"N": [3e4], "D": [2e6],
                                                             "teachers": {"N": [6e4], "D": [4e6], "from_studies": ["st"]}}},
     "grid.teachers.from_studies[0]"),
    ("distillation without teachers", {"name": "st", "trainer": {"kind": "distill"}, "grid": {"N": [3e4], "D": [2e6]}},
     "grid.teachers"),
    # OmegaConf would resolve it into the stored study and MLflow: an environment variable
    ("environment interpolation", {**_SIM, "name": "s${oc.env:HOME}"}, "name"),
    ("interpolation in a list", {**_SIM, "grid": {"N": ["${seed}"], "D": [1e8]}}, "grid.N[0]"),
]

CORPUS = [(label, raw, key) for label, raw, key in BAD_STUDIES] + MORE


def test_corpus_is_large() -> None:
    assert len(CORPUS) >= 30


@pytest.mark.parametrize(("label", "raw", "key"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_study_exits_2_names_the_key_and_writes_nothing(
    label: str, raw: dict, key: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"isoflop: error: {key}:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"], "nothing may be written"


@pytest.mark.parametrize(
    ("text", "needle"),
    [("name: [unclosed\n", "study.yaml"), ("- a\n- b\n", "mapping"), ("", "name")],
)
def test_unreadable_files_exit_2(text: str, needle: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert main(["run", str(path)]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / ".isoflop").exists()


def test_validate_refuses_a_budget_that_buys_no_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """``isoflop validate`` checks what ``isoflop run`` would refuse before anything starts."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_sel(mode="cheapest", budget_flops=1e12)))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "selection.budget_flops: a budget of 1e+12 FLOPs cannot pay for even the cheapest run (6e+14)" in err
    assert main(["validate", str(path), "selection.budget_flops=6e14"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_bad_override_and_missing_file_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_SIM))
    assert main(["run", str(path), "trainer.seq_len=-4"]) == 2
    assert "trainer.seq_len" in capsys.readouterr().err
    assert main(["validate", str(path), "grid.D[0]=-1"]) == 2
    assert "isoflop: error: grid.D[0]: one element of a list cannot be overridden: give the whole list, grid.D=[...]" in (
        capsys.readouterr().err)
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert not (tmp_path / ".isoflop").exists()


def test_ui_binds_to_loopback_and_warns_when_told_otherwise(tmp_path: Path, monkeypatch, capsys) -> None:
    """``isoflop ui`` serves the store on 127.0.0.1 by default; another host is served with a
    warning, and the password of a database URI is never printed."""
    import subprocess

    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:hunter2@db.internal/mlflow")
    assert main(["ui"]) == 0
    first = capsys.readouterr()
    assert calls[0][calls[0].index("--host") + 1] == "127.0.0.1" and "warning" not in first.err
    assert main(["ui", "--host", "0.0.0.0", "--port", "5077"]) == 0
    out, err = capsys.readouterr()
    out += first.out
    assert calls[1][calls[1].index("--host") + 1] == "0.0.0.0" and calls[1][calls[1].index("--port") + 1] == "5077"
    assert "warning: serving the UI on 0.0.0.0, reachable from other machines" in err
    assert "http://127.0.0.1:5000" in out and "mlflow:***@db.internal" in out and "hunter2" not in out + err


def test_ui_prints_an_address_whatever_the_store_answers(tmp_path: Path, monkeypatch, capsys) -> None:
    """A study whose store cannot be read (here a file store, which MLflow 3.17 refuses) still
    gets the UI started and its address printed, without the experiment's page; an IPv6 host is
    bracketed in the address."""
    import subprocess

    calls: list[list[str]] = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({**_SIM, "name": "ui-store", "tracking": {"uri": f"file://{tmp_path}/mlruns"}}))
    assert main(["ui", str(study)]) == 0
    assert "MLflow UI at http://127.0.0.1:5000/#/?workflowType=machine_learning" in capsys.readouterr().out
    assert main(["ui", "--host", "::1"]) == 0
    assert "MLflow UI at http://[::1]:5000/#/?workflowType=machine_learning" in capsys.readouterr().out
    assert len(calls) == 2


def _tree(root: Path) -> set[str]:
    """Every path under ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _refused(argv: list[str], key: str, capsys) -> str:
    """Run the CLI, expect exit 2 and one error line naming ``key``; return stdout and stderr."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"isoflop: error: {key}:"), lines
    return out + err


def _undecodable(table: Path, monkeypatch) -> None:
    table.write_bytes(b"\xff\xfe\x00N\x00,\x00D\x00\n\x00\x80\x81")


def _directory(table: Path, monkeypatch) -> None:
    table.mkdir()


def _permission_denied(table: Path, monkeypatch) -> None:
    # chmod 000 denies nobody when the tests run as root: the reader itself is made to refuse
    import laws.io

    table.write_text("N,D,loss\n1e6,1e8,3.0\n")

    def denied(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(laws.io, "read_rows", denied)


@pytest.mark.parametrize(
    ("make", "needle"),
    [(_undecodable, "not a text table"), (_directory, "is a directory"), (_permission_denied, "Permission denied")],
    ids=["undecodable bytes", "a directory", "permission denied"],
)
def test_replay_table_that_cannot_be_read_exits_2_naming_the_path(make, needle: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    table = tmp_path / "runs.csv"
    make(table, monkeypatch)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "trainer": {"kind": "replay", "replay": {"path": str(table)}}}))
    before = _tree(tmp_path)
    text = _refused(["run", str(path)], "trainer.replay.path", capsys)
    assert needle in text and "Traceback" not in text
    assert _tree(tmp_path) == before, "nothing may be written"


def test_refused_studies_add_nothing_to_a_store_in_use(tmp_path: Path, monkeypatch, capsys) -> None:
    """A store that already holds a study: a bad override, or an interpolation of a secret, is
    refused without a new experiment, run or file, and the secret is printed nowhere."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from orchestrator.executors import InlineExecutor
    from orchestrator.loading import load_study
    from orchestrator.study import run_study

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**_SIM, "tracking": {"uri": store}}))
    outcome = run_study(load_study(path), executor=InlineExecutor(), background_refit=False)
    assert outcome.stats.finished == 2

    def contents() -> tuple[list[str], list[tuple[str, str]]]:
        client = MlflowClient(tracking_uri=store)
        experiments = client.search_experiments(view_type=ViewType.ALL)
        runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)
        return sorted(e.name for e in experiments), sorted((r.info.run_id, r.info.status) for r in runs)

    experiments, runs = contents()
    assert len(runs) == 3  # the study's parent run and its two trainings
    files = _tree(tmp_path)
    capsys.readouterr()  # MLflow's own lines from creating the store
    monkeypatch.setenv("ISOFLOP_TEST_SECRET", "hunter2-not-for-mlflow")
    for override, key in [
        ("trainer.seq_len=-4", "trainer.seq_len"),
        ("name=renamed", None),  # control: a good override is not what is being refused
        ("resources.max_retries=-1", "resources.max_retries"),
        ("name=s${oc.env:ISOFLOP_TEST_SECRET}", "name"),
        ("tracking.experiment=${oc.env:ISOFLOP_TEST_SECRET}", "tracking.experiment"),
    ]:
        if key is None:
            assert main(["validate", str(path), override]) == 0
            capsys.readouterr()
            continue
        text = _refused(["run", str(path), override], key, capsys)
        assert "hunter2" not in text
    assert contents() == (experiments, runs)
    assert _tree(tmp_path) == files, "nothing may be written"


def test_ctrl_c_ends_with_one_line_and_exit_130(tmp_path: Path, monkeypatch, capsys) -> None:
    import orchestrator.cli as cli

    def interrupted(study):  # noqa: ANN001, ANN202 - Ctrl-C while the study runs
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_run", interrupted)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_SIM))
    assert main(["run", str(path)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    name = _SIM["name"]
    assert err == [f"isoflop: interrupted; finished runs are kept: `isoflop resume {name}` continues the study"]
    # renamed by an override: the name to resume is the override's (it named the YAML's, a
    # different study)
    assert main(["run", str(path), "name=renamed"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["isoflop: interrupted; finished runs are kept: `isoflop resume renamed` continues the study"]

    # Ctrl-C in the first seconds, while the command line's imports load: no traceback either
    def slow_imports():  # noqa: ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_parser", slow_imports)
    assert main(["run", str(path)]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["isoflop: interrupted"]
