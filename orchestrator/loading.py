"""Read a study: YAML over typed defaults over nothing else, then ``key=value`` overrides.

This is the only place YAML is read. The result is a frozen ``StudyConfig``; every problem is a
``StudyError`` naming the full key path, raised before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from orchestrator.config import GridConfig, StudyConfig
from orchestrator.errors import StudyError


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Load ``path``, apply ``overrides`` (``trainer.seq_len=64``), validate, return typed config."""
    path = Path(path)
    if not path.is_file():
        raise StudyError("", f"study file not found: {path}")
    try:
        text = path.read_text()
        # Safe parse first, for a clear line/column on malformed YAML.
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StudyError("", f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise StudyError("", f"{path}: cannot read: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise StudyError("", f"{path}: a study must be a mapping of keys, got {type(raw).__name__}")
    return study_from_dict(raw, overrides)


def study_from_dict(raw: dict[str, Any], overrides: Sequence[str] = (), *, stored: bool = False) -> StudyConfig:
    """Merge a plain mapping (and overrides) over the typed defaults and validate. ``stored``: the
    configuration a study ran with, read back from its store, possibly on another machine: a
    replayed table that is not here is not an error (its runs are in the store)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise StudyError(item, "an override must look like key.path=value")
        key, _, value = item.partition("=")
        if "[" in key:  # OmegaConf cannot merge a dotlist element into a list
            base = key.partition("[")[0]
            raise StudyError(key, f"one element of a list cannot be overridden: give the whole list, {base}=[...]")
        if "${" in item:  # before OmegaConf parses it: a malformed ${ would give its grammar error
            raise StudyError(key, f"interpolation (${{...}}) is not allowed in a study, got {value!r}: write the value itself")
        try:
            OmegaConf.from_dotlist([item])  # each alone first: a value YAML cannot parse names its key
        except yaml.YAMLError as exc:
            raise StudyError(key, f"not a valid value {value!r}: {getattr(exc, 'problem', None) or exc}") from None
        except OmegaConfBaseException:
            pass  # reported with its full key by the merge below
    _refuse_interpolation(raw, "")
    try:
        # resolve=False: an override's ${...} must reach the check below as written, not resolved
        dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)), resolve=False)
        assert isinstance(dotlist, dict)
        _refuse_interpolation(dotlist, "")
        merged = OmegaConf.merge(
            OmegaConf.structured(StudyConfig),
            OmegaConf.create(_law_entries(raw)),
            OmegaConf.create(_law_entries(dotlist)),
        )
        assert isinstance(merged, DictConfig)
        study = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _as_study_error(exc) from None
    assert isinstance(study, StudyConfig)
    study = _absolute_paths(study)
    validate(study, stored=stored)
    return study


def _refuse_interpolation(node: Any, prefix: str) -> None:
    """No ``${...}`` anywhere in a study, keys included. OmegaConf would resolve it while merging:
    ``${oc.env:TOKEN}`` would copy an environment variable (a secret, perhaps) into the stored
    study and the run's MLflow params and tags, and ``${other.key}`` would make a value depend on
    where it is read. No shipped study needs it. An escaped ``\\${`` is refused too: the stored
    study is written unescaped, so reading it back would resolve it."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(k, str) and "${" in k:
                raise StudyError(key, f"interpolation is not allowed in a study key: {k!r}")
            _refuse_interpolation(v, key)
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            _refuse_interpolation(v, f"{prefix}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise StudyError(
            prefix,
            f"interpolation (${{...}}) is not allowed in a study, got {node!r}: write the value itself",
        )


def _law_entries(raw: dict[str, Any]) -> dict[str, Any]:
    """``laws: [chinchilla, {family: sparsity}]``: a bare name is short for ``{family: name}``."""
    entries = raw.get("laws")
    if not isinstance(entries, list):
        return raw
    return {**raw, "laws": [{"family": e} if isinstance(e, str) else e for e in entries]}


#: tracking-URI schemes MLflow has a store for (``postgresql+psycopg2`` counts as postgresql)
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "file")


def _absolute_paths(study: StudyConfig) -> StudyConfig:
    """File paths in a study, made absolute here: workers may run in another directory."""
    uri = study.tracking.uri
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # sqlite:///rel.db
        absolute = f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
        study = dataclasses.replace(study, tracking=dataclasses.replace(study.tracking, uri=absolute))
    replay = study.trainer.replay
    if replay.path and not Path(replay.path).is_absolute():
        replay = dataclasses.replace(replay, path=str(Path(replay.path).resolve()))
        study = dataclasses.replace(study, trainer=dataclasses.replace(study.trainer, replay=replay))
    return study


def to_yaml(study: StudyConfig) -> str:
    """The resolved study as YAML (written next to every run of it)."""
    return OmegaConf.to_yaml(OmegaConf.structured(study))


def _as_study_error(exc: OmegaConfBaseException) -> StudyError:
    key = getattr(exc, "full_key", None) or ""
    message = str(exc).split("\n")[0].strip()
    if type(exc).__name__ == "MissingMandatoryValue":
        message = "a value is required"
    return StudyError(str(key), message)


def validate(study: StudyConfig, *, stored: bool = False) -> None:
    """Reject impossible values that types alone cannot catch (``stored``: see
    :func:`study_from_dict`)."""
    if not study.name.strip():
        raise StudyError("name", "must not be empty")
    if study.tracking.uri is not None:
        from orchestrator.secrets import redact_text

        scheme = study.tracking.uri.partition("://")[0].partition("+")[0].lower()
        if "://" not in study.tracking.uri or scheme not in TRACKING_SCHEMES:
            raise StudyError(
                "tracking.uri",
                f"not an MLflow tracking URI: {redact_text(study.tracking.uri)!r} (use http(s)://host:port, sqlite:////abs/path.db, "
                "postgresql://..., mysql://...; null = the embedded store)",
            )
    if any(ch in study.name for ch in "/\\'\"\n"):
        raise StudyError("name", f"must not contain quotes, slashes or newlines: {study.name!r}")
    _check_numbers(study, "")
    # the trainer's own values are checked by trainers.validation (_validate_trainer, below)
    t = study.trainer
    for key, value in {
        "grid.replicates": study.grid.replicates,
        "resources.cpus_per_run": study.resources.cpus_per_run,
        "resources.wait_timeout_s": study.resources.wait_timeout_s,
    }.items():
        if value <= 0:
            raise StudyError(key, f"must be positive, got {value}")
    if study.cluster.num_cpus is not None and study.cluster.num_cpus < 1:
        raise StudyError("cluster.num_cpus", f"must be at least 1 (or null: all of this machine's), got {study.cluster.num_cpus}")
    _validate_mixture_at(study)
    for i, b in enumerate(study.export.budgets):  # finite: _check_numbers
        if b <= 0:
            raise StudyError(f"export.budgets[{i}]", f"must be a positive number of FLOPs, got {b}")
    from laws.bootstrap import MIN_RESAMPLES

    if study.export.bootstrap < 0 or 0 < study.export.bootstrap < MIN_RESAMPLES:
        raise StudyError(
            "export.bootstrap",
            f"must be 0 (parametric intervals only) or at least {MIN_RESAMPLES} resamples, got {study.export.bootstrap}",
        )
    if study.tracking.figures_every_s < 0:
        raise StudyError("tracking.figures_every_s", f"must be 0 (after every refit) or more, got {study.tracking.figures_every_s}")
    if study.tracking.flush_every_s < 0:
        raise StudyError("tracking.flush_every_s", f"must be 0 (every metric at once) or more, got {study.tracking.flush_every_s}")
    if study.resources.pending_warn_s < 0:
        raise StudyError("resources.pending_warn_s", f"must be 0 (never) or more, got {study.resources.pending_warn_s}")
    if study.resources.max_retries < 0:
        raise StudyError("resources.max_retries", "must be 0 or more")
    if study.resources.max_concurrent < 0:
        raise StudyError("resources.max_concurrent", "must be 0 (automatic) or more")
    _auto_or_amount("resources.memory_per_run", study.resources.memory_per_run, "number of MB")
    _auto_or_amount("resources.gpus_per_run", study.resources.gpus_per_run, "number")
    _validate_workers(study)
    for i, kind in enumerate(study.cluster.autoscale):
        key = f"cluster.autoscale[{i}]"
        if kind.cpus <= 0:
            raise StudyError(f"{key}.cpus", f"must be positive, got {kind.cpus}")
        if kind.gpus < 0 or kind.memory_mb < 0:
            raise StudyError(f"{key}.{'gpus' if kind.gpus < 0 else 'memory_mb'}", "must be 0 or more")
        if kind.max_nodes < 1:
            raise StudyError(f"{key}.max_nodes", f"must be at least 1, got {kind.max_nodes}")
    if study.resources.gpu_memory_mb < 0:
        raise StudyError("resources.gpu_memory_mb", f"must be 0 (not known: a whole GPU per run, unless resources.detect_gpu_memory) or more, got {study.resources.gpu_memory_mb}")
    _validate_trainer(study)
    _validate_grid(study, stored=stored)
    _validate_names(study)
    _validate_selection(study)
    if t.kind == "simulated":
        _validate_simulated(study)


def _validate_trainer(study: StudyConfig) -> None:
    """The trainer config's own checks (``trainers.validation``), under ``trainer.``."""
    from trainers.validation import validate_trainer_config

    try:
        validate_trainer_config(study.trainer)
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        raise StudyError(f"trainer.{key}", message) from None


def _validate_simulated(study: StudyConfig) -> None:
    """The simulated trainer's ground truth: a known law family whose inputs a simulated run
    has (N, D, S, mixture weights), with exactly that family's parameters when they are given."""
    from laws import LAW_NAMES, get_law

    sim = study.trainer.simulated
    if sim.law not in LAW_NAMES:
        raise StudyError("trainer.simulated.law", f"unknown law {sim.law!r}; valid laws: {', '.join(LAW_NAMES)}")
    from laws.mixture import is_mixture_law
    from orchestrator.grid import mixture_width

    k = mixture_width(study)
    try:
        law = get_law(sim.law, k=k) if k and is_mixture_law(sim.law) else get_law(sim.law)
    except (TypeError, ValueError) as exc:
        raise StudyError("trainer.simulated.law", str(exc)) from None
    # a student's teacher loss L_T comes from its teacher (grid.teachers)
    have = {"N", "D", "S", *(f"h{i + 1}" for i in range(k)), *(["L_T"] if study.grid.teachers is not None else [])}
    if missing := [name for name in law.inputs if name not in have]:
        raise StudyError("trainer.simulated.law", f"{sim.law!r} needs inputs {missing} that a simulated run does not have")
    if sim.params and set(sim.params) != set(law.param_names):
        raise StudyError(
            "trainer.simulated.params",
            f"{sim.law!r} takes parameters {list(law.param_names)}, got {sorted(sim.params)}",
        )
    if not sim.params and sim.law != "chinchilla":
        raise StudyError("trainer.simulated.params", f"give the parameters of the {sim.law!r} ground truth")
    for p in law.params:  # a truth the family can express: log parameters 0 or more (finite: _check_numbers)
        v = sim.params.get(p.name)
        if p.log and v is not None and v < 0:
            raise StudyError(f"trainer.simulated.params.{p.name}", f"must be 0 or more, got {v}")
    if sim.law != "distillation":
        if sim.supervised:
            raise StudyError("trainer.simulated.supervised", f"is for a distillation ground truth, not {sim.law!r}")
        return
    # the teachers' truth, which is also the student's supervised loss Ls~ (Busbridge et al. 2025)
    supervised = get_law("chinchilla_gamma").param_names
    if set(sim.supervised) != set(supervised):
        raise StudyError(
            "trainer.simulated.supervised",
            f"a distillation truth needs the teachers' supervised law (chinchilla_gamma) with parameters "
            f"{list(supervised)}, got {sorted(sim.supervised) or 'none'}",
        )


def _validate_workers(study: StudyConfig) -> None:
    """Data-parallel workers: a whole number of them, each with a whole GPU or none, and an equal
    share of every batch."""
    res, batch = study.resources, study.trainer.batch_size
    gpus = None if res.gpus_per_run == "auto" else float(res.gpus_per_run)
    if res.workers_per_run == "auto":
        if gpus is not None and gpus > 1 and not gpus.is_integer():
            raise StudyError("resources.gpus_per_run", f"more than one GPU per run must be a whole number (one data-parallel worker each), got {res.gpus_per_run}")
        workers = int(gpus) if gpus is not None and gpus > 1 else 1
    else:
        try:
            workers = int(res.workers_per_run)
        except ValueError:
            workers = 0
        if workers < 1 or str(workers) != res.workers_per_run.strip():
            raise StudyError("resources.workers_per_run", f"must be 'auto' or a whole number of at least 1, got {res.workers_per_run!r}")
        if gpus is not None and workers > 1 and gpus > 0 and not (gpus / workers).is_integer():
            raise StudyError("resources.workers_per_run", f"{workers} workers cannot share {res.gpus_per_run} GPUs one or more whole GPUs each")
    if workers > 1 and study.trainer.kind in ("simulated", "replay"):
        raise StudyError("resources.workers_per_run", f"{study.trainer.kind!r} runs train nothing to split among workers")
    if workers > 1 and batch % workers:
        raise StudyError("resources.workers_per_run", f"trainer.batch_size {batch} cannot be split evenly among {workers} workers")


def _auto_or_amount(key: str, value: str, what: str) -> None:
    """A resource given as ``auto`` or a non-negative number."""
    if value == "auto":
        return
    try:
        ok = float(value) >= 0
    except ValueError:
        ok = False
    if not ok:
        raise StudyError(key, f"must be 'auto' or a non-negative {what}, got {value!r}")


def _check_numbers(node: Any, prefix: str) -> None:
    """Every float in the study must be finite: NaN and inf are never meaningful here."""
    if is_dataclass(node):
        for f in fields(node):
            _check_numbers(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(node, dict):
        for k, v in node.items():
            _check_numbers(v, f"{prefix}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            _check_numbers(v, f"{prefix}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise StudyError(prefix, f"must be a finite number, got {node}")


def _validate_grid(study: StudyConfig, *, stored: bool = False) -> None:
    g = study.grid
    if study.trainer.kind == "replay":
        # the table's rows are the runs: no grid axis applies (a sparsity or mixture axis made
        # each row several runs with the same answer; teachers trained real models)
        default = GridConfig()
        for f in fields(GridConfig):
            if f.name != "replicates" and getattr(g, f.name) != getattr(default, f.name):
                raise StudyError(
                    f"grid.{f.name}",
                    "a replay study's runs are the rows of trainer.replay.path: give its other inputs as "
                    "trainer.replay.inputs (columns of the table), and leave the grid empty but for grid.replicates",
                )
        _validate_replay_inputs(study)
        if not (stored and not Path(study.trainer.replay.path).exists()):
            _validate_replay_table(study)
        return
    for axis in ("N", "D", "tokens_per_param"):
        for i, value in enumerate(getattr(g, axis)):
            if value <= 0:
                raise StudyError(f"grid.{axis}[{i}]", f"must be positive, got {value}")
    if g.space is not None:
        _validate_space(study)
    elif g.isoflop is not None:
        if not g.isoflop.budgets:
            raise StudyError("grid.isoflop.budgets", "must list at least one compute budget")
        for i, c in enumerate(g.isoflop.budgets):
            if c <= 0:
                raise StudyError(f"grid.isoflop.budgets[{i}]", f"must be positive, got {c}")
        if g.isoflop.points_per_budget < 1:
            raise StudyError("grid.isoflop.points_per_budget", "must be at least 1")
        if g.isoflop.span < 1:
            raise StudyError("grid.isoflop.span", f"must be at least 1, got {g.isoflop.span}")
        if g.N or g.D or g.tokens_per_param:
            raise StudyError("grid.isoflop", "give either an isoflop block or N with D, not both")
    else:
        if not g.N:
            raise StudyError("grid", "empty grid: give grid.N with grid.D or grid.tokens_per_param, or grid.isoflop")
        if bool(g.D) == bool(g.tokens_per_param):
            raise StudyError("grid.D", "give exactly one of grid.D and grid.tokens_per_param with grid.N")
    for i, sp in enumerate(g.sparsity):
        if not 0.0 <= sp < 1.0:
            raise StudyError(f"grid.sparsity[{i}]", f"must be in [0, 1), got {sp}")
    if any(sp > 0 for sp in g.sparsity) and study.trainer.kind not in ("moe", "simulated"):
        raise StudyError("grid.sparsity", f"sparsity above 0 needs trainer.kind moe, not {study.trainer.kind!r}")
    domains = study.trainer.data.domains or {"code": None, "prose": None}
    if g.simplex is not None:
        from orchestrator.grid import grid_mixtures

        if g.mixture:
            raise StudyError("grid.simplex", "give grid.mixture (explicit weights) or grid.simplex, not both")
        grid_mixtures(study)  # a grid that cannot be laid out names grid.simplex
    for i, weights in enumerate(g.mixture):
        key = f"grid.mixture[{i}]"
        if len(weights) != len(domains):
            raise StudyError(key, f"has {len(weights)} weights for {len(domains)} domains ({', '.join(domains)})")
        if any(w < 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=1e-6):
            raise StudyError(key, f"weights must be non-negative and sum to 1, got {list(weights)}")
    _validate_dependencies(study, list(domains))


def _validate_replay_inputs(study: StudyConfig) -> None:
    """trainer.replay.inputs and losses: law input names beyond N and D, loss columns."""
    replay = study.trainer.replay
    for i, name in enumerate(replay.inputs):
        key = f"trainer.replay.inputs[{i}]"
        if not name.isidentifier():
            raise StudyError(key, f"{name!r} is not an input name (letters, digits and _, as laws name their inputs)")
        if name in ("N", "D", "C"):
            raise StudyError(key, f"{name} is always read from the table (map its column with trainer.replay.columns.{name})")
        if name in replay.inputs[:i]:
            raise StudyError(key, f"{name!r} is given twice")
    for i, name in enumerate(replay.losses):
        if not name or name in replay.losses[:i]:
            raise StudyError(f"trainer.replay.losses[{i}]", f"{name!r}: name each loss column once")
    for name in replay.columns:  # a mapping no column is read through was ignored, a typo with it
        if name not in ("N", "D", "C", "loss", *replay.inputs):
            raise StudyError(
                f"trainer.replay.columns.{name}",
                f"{name!r} is not read from the table: map N, D, C, loss or one of trainer.replay.inputs "
                f"({', '.join(replay.inputs) or 'none given'})",
            )


def _validate_replay_table(study: StudyConfig) -> None:
    """trainer.replay.path: a table that exists, can be read as text and has usable rows."""
    import csv

    from trainers.replay import load_replay_table

    replay = study.trainer.replay
    if replay.path and Path(replay.path).is_dir():
        raise StudyError("trainer.replay.path", f"{replay.path!r} is a directory, not a table of runs (a CSV or Parquet file)")
    try:
        table = load_replay_table(replay)
        table.check_costs(replay)
    except UnicodeDecodeError as exc:  # a ValueError whose text names no key
        raise StudyError(
            "trainer.replay.path", f"{replay.path!r} is not a text table of runs (a CSV file): {exc.reason} at byte {exc.start}"
        ) from None
    except (OSError, csv.Error) as exc:
        # permission denied, an I/O error, NUL bytes: the file is there but cannot be read as a table
        raise StudyError("trainer.replay.path", f"cannot read {replay.path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    except ValueError as exc:
        key, _, message = str(exc).partition(": ")
        if not key.startswith("trainer.replay."):  # the table reader names the file, not the key
            key, message = "trainer.replay.path", str(exc)
        raise StudyError(key, message) from None
    # a replicate is another row of the same point: with fewer rows, the same row answered twice
    short = next(((k, len(rows)) for k, rows in table.by_point.items() if len(rows) < study.grid.replicates), None)
    if short is not None:
        (n, d, _), rows = short
        raise StudyError(
            "grid.replicates",
            f"{study.grid.replicates} replicates of each run need as many rows of each point of the table; "
            f"N={n:g}, D={d:g} has {rows}",
        )


def _validate_mixture_at(study: StudyConfig) -> None:
    """export.mixture_at: (N, D) points, for a study that fits a mixture law."""
    for i, point in enumerate(study.export.mixture_at):
        key = f"export.mixture_at[{i}]"
        if set(point) != {"N", "D"}:
            raise StudyError(key, f"needs exactly N and D, got {sorted(point)}")
        for name, value in point.items():
            if not value > 0:
                raise StudyError(f"{key}.{name}", f"must be positive, got {value}")
    from laws.mixture import is_mixture_law

    if study.export.mixture_at and not any(is_mixture_law(c.family) for c in study.laws):
        raise StudyError("export.mixture_at", "the study fits no mixture law (mixture_additive or mixture_joint)")


def _validate_space(study: StudyConfig) -> None:
    """grid.space: a continuous region for a budgeted selection."""
    g, space = study.grid, study.grid.space
    assert space is not None
    if g.N or g.D or g.tokens_per_param or g.isoflop is not None:
        raise StudyError("grid.space", "give a continuous space or a grid (N with D, or isoflop), not both")
    if study.selection.mode == "grid":
        raise StudyError(
            "selection.mode", "grid.space is a continuous region, not a grid to train whole: choose runs from it with active, random or cheapest"
        )
    if g.teachers is not None or g.finetune is not None or g.cooldown_branches:
        raise StudyError("grid.space", "runs that start from other runs (teachers, finetune, cooldown_branches) need a grid")
    if space.N is None:
        raise StudyError("grid.space.N", "a continuous space needs the range of model sizes, {min: ..., max: ...}")
    given = [a for a in ("D", "C", "tokens_per_param") if getattr(space, a) is not None]
    if len(given) != 1:
        raise StudyError("grid.space.D", f"give exactly one of D, C and tokens_per_param, got {given or 'none'}")
    for axis in ("N", *given):
        r = getattr(space, axis)
        if not r.min > 0:
            raise StudyError(f"grid.space.{axis}.min", f"must be positive, got {r.min}")
        if r.max < r.min:
            raise StudyError(f"grid.space.{axis}.max", f"must be at least min ({r.min:g}), got {r.max:g}")
    if not 1 <= space.candidates <= 100_000:
        raise StudyError("grid.space.candidates", f"must be between 1 and 100000, got {space.candidates}")
    if space.mixture:
        from orchestrator.grid import domain_names

        k = len(domain_names(study))
        if g.mixture or g.simplex is not None:
            raise StudyError("grid.space.mixture", "continuous mixtures replace grid.mixture and grid.simplex: give one")
        if k < 2:
            raise StudyError("grid.space.mixture", f"mixtures need at least two domains in trainer.data, got {k}")
        if not 0 <= space.min_weight < 1 / k:
            raise StudyError("grid.space.min_weight", f"must be in [0, 1/{k}) for {k} domains, got {space.min_weight}")
    elif space.min_weight != 0:
        raise StudyError("grid.space.min_weight", "is for continuous mixtures (grid.space.mixture: true)")


def _validate_dependencies(study: StudyConfig, domains: list[str]) -> None:
    """grid.teachers and grid.finetune: runs that start from other runs."""
    g = study.grid
    kind = study.trainer.kind
    if g.cooldown_branches:
        if study.trainer.optim.schedule != "wsd":
            raise StudyError("grid.cooldown_branches", f"cooldown branches need trainer.optim.schedule wsd, not {study.trainer.optim.schedule!r}")
        if kind not in ("dense", "moe"):
            raise StudyError("grid.cooldown_branches", f"cooldown branches need trainer.kind dense or moe, not {kind!r}")
        if g.isoflop is not None:
            raise StudyError("grid.cooldown_branches", "cooldown branches take grid.N with grid.D or grid.tokens_per_param, not isoflop")
        if g.teachers is not None or g.finetune is not None:
            raise StudyError("grid.cooldown_branches", "cooldown branches cannot be combined with grid.teachers or grid.finetune")
        if study.trainer.optim.warmup_steps:
            raise StudyError("trainer.optim.warmup_steps", "cooldown branches set the shared warmup themselves (from warmup_frac); leave warmup_steps at 0")
    if study.trainer.optim.warmup_steps < 0:
        raise StudyError("trainer.optim.warmup_steps", f"must be 0 or more, got {study.trainer.optim.warmup_steps}")
    if g.teachers is not None and g.finetune is not None:
        raise StudyError("grid.finetune", "a study has teachers or finetuning runs, not both")
    if g.teachers is not None:
        t = g.teachers
        simulated = kind == "simulated" and study.trainer.simulated.law == "distillation"
        if kind != "distill" and not simulated:
            raise StudyError(
                "grid.teachers",
                f"teachers need trainer.kind distill (or simulated with trainer.simulated.law distillation), not {kind!r}",
            )
        if not t.N:
            raise StudyError("grid.teachers.N", "list at least one teacher size")
        if bool(t.D) == bool(t.tokens_per_param):
            raise StudyError("grid.teachers.D", "give exactly one of grid.teachers.D and grid.teachers.tokens_per_param")
        for axis in ("N", "D", "tokens_per_param"):
            for i, value in enumerate(getattr(t, axis)):
                if value <= 0:
                    raise StudyError(f"grid.teachers.{axis}[{i}]", f"must be positive, got {value}")
        for i, name in enumerate(g.teachers.from_studies):
            if name == study.name:
                raise StudyError(f"grid.teachers.from_studies[{i}]", f"{name!r} is this study; name other studies")
    elif kind == "distill":
        raise StudyError("grid.teachers", "trainer.kind distill needs teachers: give grid.teachers")
    if g.finetune is not None:
        ft = g.finetune
        if kind != "dense":
            raise StudyError("grid.finetune", f"finetuning runs need trainer.kind dense, not {kind!r}")
        if g.isoflop is not None:
            raise StudyError("grid.finetune", "finetuning takes grid.N with grid.D or grid.tokens_per_param (finetuning tokens), not isoflop")
        if g.mixture or g.simplex is not None:
            raise StudyError("grid.simplex" if g.simplex is not None else "grid.mixture", "a finetuning study's mixtures come from grid.finetune (target domain and injection)")
        if ft.domain not in domains:
            raise StudyError("grid.finetune.domain", f"no domain {ft.domain!r}; the study's domains are {', '.join(domains)}")
        if len(domains) < 2:
            raise StudyError("grid.finetune.domain", "finetuning needs a pretraining domain besides the target")
        if not ft.injection:
            raise StudyError("grid.finetune.injection", "list at least one injection share (0 = none)")
        for i, p in enumerate(ft.injection):
            if not 0.0 <= p < 1.0:
                raise StudyError(f"grid.finetune.injection[{i}]", f"must be in [0, 1), got {p}")
        if ft.pretrain_tokens_per_param <= 0:
            raise StudyError("grid.finetune.pretrain_tokens_per_param", f"must be positive, got {ft.pretrain_tokens_per_param}")
        pm = ft.pretrain_mixture
        if pm:
            if len(pm) != len(domains):
                raise StudyError("grid.finetune.pretrain_mixture", f"has {len(pm)} weights for {len(domains)} domains ({', '.join(domains)})")
            if any(w < 0 for w in pm) or sum(pm) <= 0:
                raise StudyError("grid.finetune.pretrain_mixture", f"weights must be non-negative with a positive sum, got {list(pm)}")
            if pm[domains.index(ft.domain)] != 0:
                raise StudyError("grid.finetune.pretrain_mixture", f"the target domain {ft.domain!r} must have weight 0 in pretraining")


def _validate_names(study: StudyConfig) -> None:
    from trainers import TRAINER_KINDS

    if study.trainer.kind not in TRAINER_KINDS:
        raise StudyError(
            "trainer.kind", f"unknown trainer {study.trainer.kind!r}; valid kinds: {', '.join(TRAINER_KINDS)}"
        )
    if not study.laws:
        raise StudyError("laws", "name at least one law to fit")
    _validate_laws(study)


def _validate_laws(study: StudyConfig) -> None:
    """Every law entry must build, have a unique name, and fit a loss its runs record."""
    from laws import LAW_NAMES
    from laws.custom import CustomLawError
    from orchestrator.fitting import SUPERVISED_FAMILIES, build_law, law_name
    from orchestrator.grid import domain_names, mixture_width

    domains = domain_names(study)
    names: dict[str, int] = {}
    for i, c in enumerate(study.laws):
        key = f"laws[{i}]"
        if c.family != "custom" and c.family not in LAW_NAMES:
            raise StudyError(f"{key}.family", f"unknown law {c.family!r}; valid laws: {', '.join((*LAW_NAMES, 'custom'))}")
        if c.family == "custom" and not c.expression:
            raise StudyError(f"{key}.expression", "a custom law needs an expression (and its inputs and params)")
        if c.family != "custom" and (c.expression or c.inputs or c.params):
            raise StudyError(f"{key}.expression", f"expression, inputs and params are for custom laws, not {c.family!r}")
        try:
            built = build_law(c, len(domains))
        except CustomLawError as exc:  # "<field>: <message>", the field of the law's entry
            field, _, message = str(exc).partition(": ")
            raise StudyError(f"{key}.{field}" if message else key, message or field) from None
        except ValueError as exc:
            raise StudyError(key, str(exc)) from None
        name = law_name(c)
        if name in names:
            raise StudyError(f"{key}.name", f"law name {name!r} is already used by laws[{names[name]}]; give each a name")
        names[name] = i
        if study.trainer.kind == "replay":  # a replayed run's losses: its loss column and trainer.replay.losses
            recorded_losses = ["loss", *(f"eval_loss/{x}" for x in study.trainer.replay.losses)]
            if c.loss not in recorded_losses:
                raise StudyError(
                    f"{key}.loss",
                    f"replayed runs record {', '.join(recorded_losses)}, not {c.loss!r} (add its column to trainer.replay.losses)",
                )
        elif c.loss.startswith("eval_loss/") and c.loss.removeprefix("eval_loss/") not in domains:
            raise StudyError(f"{key}.loss", f"no domain {c.loss.removeprefix('eval_loss/')!r}; the study's domains are {', '.join(domains)}")
        if c.loss == "pretrain_loss" and study.grid.finetune is None:
            raise StudyError(f"{key}.loss", "pretrain_loss is recorded by finetuning runs only (grid.finetune)")
        if c.runs == "teacher" and study.grid.teachers is None:
            raise StudyError(f"{key}.runs", "the study has no teacher runs (grid.teachers)")
        if c.runs == "pretrain" and study.grid.finetune is None:
            raise StudyError(f"{key}.runs", "the study has no pretrained runs (grid.finetune)")
        if c.supervised is not None:
            if c.family != "distillation":
                raise StudyError(f"{key}.supervised", f"only a distillation law takes a supervised law, not {c.family!r}")
            j = names.get(c.supervised)
            if j is None or j == i:
                raise StudyError(f"{key}.supervised", f"{c.supervised!r} must name a law listed before it")
            if study.laws[j].family not in SUPERVISED_FAMILIES:
                raise StudyError(f"{key}.supervised", f"{c.supervised!r} is a {study.laws[j].family} law; use one of {', '.join(SUPERVISED_FAMILIES)}")
        recorded = _recorded_inputs(study, mixture_width(study), c.runs)
        if recorded is not None and (missing := [x for x in built.inputs if x not in recorded]):
            raise StudyError(
                f"{key}.inputs" if c.family == "custom" else key,
                f"the law takes {missing}, which this study's {c.runs} runs do not record (they record "
                f"{', '.join(sorted(recorded))})",
            )


def _recorded_inputs(study: StudyConfig, k: int, runs: str) -> set[str] | None:
    """The law inputs the study's ``runs`` (main, teacher or pretrain) record
    (:func:`orchestrator.tracking.law_inputs` and the grid's and dependencies' extras, or a
    replayed table's input columns)."""
    from orchestrator.scheduler import DEPENDENCY_INPUTS
    from orchestrator.tracking import RUN_INPUTS

    if study.trainer.kind == "replay":  # the plan's inputs (S only from the table), and the table's input columns
        return {*(x for x in RUN_INPUTS if x != "S"), *study.trainer.replay.inputs}
    out = {*RUN_INPUTS, *(f"h{i + 1}" for i in range(k))}
    if runs == "main" and study.grid.teachers is not None:
        out.add(DEPENDENCY_INPUTS["teacher"])
    if runs == "main" and study.grid.finetune is not None:
        out |= {"D_ft", "p", DEPENDENCY_INPUTS["init"]}  # the grid's finetuning inputs and the pretrained loss
    return out


def _validate_selection(study: StudyConfig) -> None:
    sel = study.selection
    from orchestrator.fitting import law_name

    names = [law_name(c) for c in study.laws]
    if sel.law is not None and sel.law not in names:
        raise StudyError("selection.law", f"{sel.law!r} is not one of the study's laws {names}")
    for key, value in {
        "selection.tolerance": sel.tolerance,
        "selection.initial_runs": sel.initial_runs,
        "selection.cost_exponent": 0.0 if sel.cost_exponent is None else sel.cost_exponent,
        "selection.cost_overhead_flops": sel.cost_overhead_flops,
        "selection.misfit_prior": sel.misfit_prior,
    }.items():
        if value < 0:
            raise StudyError(key, f"must be 0 or more, got {value}")
    if sel.refit_every < 1:
        raise StudyError("selection.refit_every", f"must be at least 1, got {sel.refit_every}")
    if sel.budget_flops is not None and sel.budget_fraction is not None:
        raise StudyError("selection.budget_fraction", "give selection.budget_flops or selection.budget_fraction, not both")
    if sel.budget_flops is not None and sel.budget_flops <= 0:
        raise StudyError("selection.budget_flops", f"must be positive, got {sel.budget_flops}")
    if sel.budget_fraction is not None and not 0 < sel.budget_fraction <= 1:
        raise StudyError("selection.budget_fraction", f"must be in (0, 1], got {sel.budget_fraction}")
    if sel.mode == "grid":
        if sel.budget_flops is not None or sel.budget_fraction is not None:
            key = "selection.budget_flops" if sel.budget_flops is not None else "selection.budget_fraction"
            raise StudyError(key, "grid mode trains every run: a budget needs selection.mode active, random or cheapest")
        if sel.tolerance > 0:
            raise StudyError("selection.tolerance", "grid mode trains every run: an early stop needs selection.mode active, random or cheapest")
        return
    if study.grid.finetune is not None:
        # a finetuning run's law input L_pt0 is its pretrained run's loss, which no law of the
        # study predicts before that run has trained
        raise StudyError(
            "selection.mode", f"{sel.mode} selection cannot yet choose among finetuning runs (grid.finetune); use grid"
        )
    if sel.budget_flops is None and sel.budget_fraction is None:
        raise StudyError("selection.budget_flops", f"selection mode {sel.mode!r} needs a budget_flops or budget_fraction")
    from orchestrator.selection.selector import selection_law

    chosen = selection_law(study)
    law = chosen.law
    if study.grid.teachers is not None:
        # the candidates are the students; their teachers are trained when a student needs one
        if chosen.runs != "main":
            raise StudyError(
                "selection.law",
                f"{chosen.name!r} is fitted to the {chosen.runs} runs, but a selection chooses among the students "
                "(the grid's own runs): name a law fitted to them, e.g. selection.law: distillation",
            )
        if "L_T" in law.inputs and chosen.law.name != "distillation":
            raise StudyError(
                "selection.law",
                f"{chosen.name!r} takes the teacher's loss L_T but cannot predict it for teachers not trained yet; use a distillation law",
            )
    t = sel.target
    if sel.mode == "active" and t.budget is None and not t.points:
        raise StudyError("selection.target", "active selection needs a target: a budget or points")
    if t.budget is not None and t.budget <= 0:
        raise StudyError("selection.target.budget", f"must be positive, got {t.budget}")
    if t.budget is not None and set(law.inputs) != {"N", "D"}:
        # the compute optimum of a budget is over N and D alone (C = 6ND)
        raise StudyError(
            "selection.target.budget",
            f"law {law.name!r} takes inputs {list(law.inputs)}: a budget's compute optimum needs a law of N and D alone; "
            "give target points with every input instead",
        )
    # the quantities are at the budget: with target points alone they do not apply
    for i, q in enumerate(t.quantities if t.budget is not None else []):
        if q not in ("loss", "N_opt"):
            raise StudyError(f"selection.target.quantities[{i}]", f"unknown quantity {q!r}; use loss or N_opt")
        if q == "N_opt" and not {"A", "B", "alpha", "beta"} <= set(law.param_names):
            raise StudyError(
                f"selection.target.quantities[{i}]", f"law {law.name!r} has no closed-form N_opt; target its loss instead"
            )
    for i, point in enumerate(t.points):
        unknown = sorted(set(point) - set(law.inputs))
        missing = [k for k in law.inputs if k not in point]
        if unknown or missing:
            raise StudyError(
                f"selection.target.points[{i}]",
                f"law {law.name!r} takes inputs {list(law.inputs)}; missing {missing}, unknown {unknown}",
            )
        for k, v in point.items():
            if v <= 0:
                raise StudyError(f"selection.target.points[{i}].{k}", f"must be positive, got {v}")
