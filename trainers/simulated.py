"""The simulated trainer: a known scaling law plus seeded noise, in milliseconds per run.

It lets a whole study (grid expansion, scheduling, tracking, refits, run selection) be exercised
against a ground truth that is known exactly: by default the Chinchilla law with the parameters
re-fitted to the Epoch replication (``trainers.config.REPLICATION_CHINCHILLA``).

For a run at (N, D) with seed s, ``z_0, z_1, ...`` are standard normal draws from
``numpy.random.default_rng([s, hash(run key)])`` (independent across runs) and

    final_loss = L(N, D) * exp(noise * z_0)                      (log-normal, median L(N, D))
    curve_i    = L(N, D_i) * exp(noise * z_i),  D_i = D * i / K  for i = 1 .. K - 1
    curve_K    = final_loss

with K = ``curve_points``. The cost model reports ``overhead_s + C / flops_per_second``
seconds of wall time without spending them.

The law may take more than N and D: a run's sparsity S (``simulated.law: sparsity``) and mixture
weights h1 .. hk come from its grid point. A simulated mixture-of-experts keeps every parameter in
its experts, so a run of total size N at sparsity S computes with N (1 - S) active parameters:
C = 6 N (1 - S) D, the convention of :func:`laws.optimal_sparsity`.

Distillation (``simulated.law: distillation`` with ``grid.teachers``): a teacher is a simulated
supervised run of the law ``chinchilla_gamma`` with the parameters ``simulated.supervised``
(Busbridge et al. 2025, Eq. 1; :func:`teacher_config`); a student's truth is the distillation law
with the parameters ``simulated.params`` and the same supervised law for its Ls~, evaluated at
its own teacher's loss L_T. A simulated run has no weights to hand over: a run given a
``checkpoint_dir`` (every teacher is) writes its final loss there as a small JSON file
(:data:`RESULT_FILE`), and a student reads its teacher's from the folder of
``spec.teacher_checkpoint``, so L_T is the teacher's noisy final loss, exactly the L_T the
scheduler records as the student's law input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trainers.base import CurvePoint, MetricSink, RunPlan, RunPoint, RunResult, RunSpec, Trainer
from trainers.batch_scaling import at_batch_size
from trainers.config import REPLICATION_CHINCHILLA, TrainerConfig
from trainers.schedule import lr_at


def noise_seed(spec: RunSpec) -> list[int]:
    """Entropy of a run's noise: its seed and its identity, so that runs sharing a seed (every
    run of a replicate) still draw independent noise."""
    digest = hashlib.sha256(spec.run_key.encode()).digest()
    return [spec.seed, int.from_bytes(digest[:8], "little")]


#: what a simulated run leaves in its checkpoint directory: ``{"run_key": ..., "final_loss": ...}``
RESULT_FILE = "result.json"


def load_law(name: str, supervised: Mapping[str, float] | None = None) -> Any:
    """The ground-truth law family ``name`` from ``laws`` (imported only when a run trains); a
    distillation truth takes its supervised law's parameters (Ls~) from ``supervised``."""
    from laws import get_law

    return get_law(name, supervised=dict(supervised)) if name == "distillation" and supervised else get_law(name)


def teacher_config(config: TrainerConfig) -> TrainerConfig:
    """The configuration of a simulated distillation study's teachers: supervised runs of the
    ``chinchilla_gamma`` law with the study's ``simulated.supervised`` parameters."""
    sim = config.simulated
    return replace(config, simulated=replace(sim, law="chinchilla_gamma", params=dict(sim.supervised), supervised={}))


def write_result(checkpoint_dir: str, run_key: str, final_loss: float) -> Path:
    """Record a simulated run's final loss in its checkpoint directory (atomically: a reader
    never sees half a file). Plain JSON: nothing a reader executes."""
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULT_FILE
    tmp = folder / f".{RESULT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"run_key": run_key, "final_loss": float(final_loss)}))
    os.replace(tmp, path)
    return path


def teacher_loss(spec: RunSpec) -> float:
    """L_T of a simulated student: the final loss its teacher recorded next to
    ``spec.teacher_checkpoint`` (that file, or a file or folder beside it)."""
    if not spec.teacher_checkpoint:
        raise ValueError(
            f"teacher_checkpoint: simulated student {spec.run_key} needs its teacher's checkpoint "
            f"(run {spec.point.teacher!r}); the scheduler fills it in once the teacher has finished"
        )
    given = Path(spec.teacher_checkpoint)
    path = given if given.name == RESULT_FILE else (given if given.is_dir() else given.parent) / RESULT_FILE
    try:
        record = json.loads(path.read_text())
        loss = float(record["final_loss"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"teacher_checkpoint: cannot read the teacher's result {path}: {exc}") from None
    if spec.point.teacher is not None and record.get("run_key") not in (None, spec.point.teacher):
        raise ValueError(f"teacher_checkpoint: {path} is run {record.get('run_key')}'s, not the teacher {spec.point.teacher}'s")
    return loss


def plan_simulated(point: RunPoint, config: TrainerConfig) -> RunPlan:
    """A run of N parameters on D tokens under C = 6·N·D; there is no model shape."""
    if point.n_params < 1:
        raise ValueError(f"n_params: must be a positive integer, got {point.n_params}")
    if point.tokens < 1:
        raise ValueError(f"tokens: must be a positive integer, got {point.tokens}")
    if config.simulated.curve_points < 1:
        raise ValueError(
            f"simulated.curve_points: must be >= 1, got {config.simulated.curve_points}"
        )
    active = point.n_params * (1.0 - point.sparsity)
    per_token = 6.0 * active
    return RunPlan(
        shape=None,
        n_params=point.n_params,
        n_params_non_embedding=point.n_params,
        n_params_active=int(round(active)),
        flops_per_token=per_token,
        tokens=point.tokens,
        steps=config.simulated.curve_points,
        flops=per_token * point.tokens,
        flop_convention="6N(1-S)" if point.sparsity > 0 else "6N",
    )


def law_point(point: RunPoint, n: float, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The law's inputs along a run's curve: N, D and, for laws that take them, S and h1 .. hk."""
    k = tokens.shape[0]
    inputs = {"N": np.full(k, float(n)), "D": tokens.astype(np.float64), "S": np.full(k, float(point.sparsity))}
    for i, w in enumerate(point.mixture):
        inputs[f"h{i + 1}"] = np.full(k, float(w))
    return inputs


def law_params(config: TrainerConfig) -> Mapping[str, float]:
    """The configured ground-truth parameters, or the replication's Chinchilla fit."""
    return dict(config.simulated.params) if config.simulated.params else REPLICATION_CHINCHILLA


class SimulatedTrainer(Trainer):
    """Ground-truth law plus log-normal noise (kind ``simulated``); see the module docstring."""

    kind = "simulated"

    def plan(self, point: RunPoint) -> RunPlan:
        """Exact size and cost; see ``plan_simulated``."""
        return plan_simulated(point, self.config)

    def train(self, spec: RunSpec, sink: MetricSink) -> RunResult:
        """Draw the run's curve and final loss; deterministic in ``spec.seed``."""
        config = spec.trainer
        sim = config.simulated
        plan = plan_simulated(spec.point, config)
        n, d, k = plan.n_params, plan.tokens, plan.steps
        law = load_law(sim.law, sim.supervised)
        optim = at_batch_size(config).optim  # the logged lr follows the batch-size rule too

        # D_i = D * i / K (whole tokens, at least 1); the last point is the run's end, D.
        tokens_k = np.maximum(1, (d * np.arange(1, k + 1)) // k).astype(np.int64)
        tokens_k[-1] = d
        point_k = law_point(spec.point, n, tokens_k)  # the law rejects inputs it lacks, naming them
        metrics: dict[str, float] = {}
        if "L_T" in law.inputs:  # a student: the distillation law at its own teacher's loss
            metrics["teacher_eval_loss"] = teacher_loss(spec)
            point_k["L_T"] = np.full(k, metrics["teacher_eval_loss"])
        clean_k = np.asarray(
            law.predict(law_params(config), **{name: x for name, x in point_k.items() if name in law.inputs}),
            dtype=np.float64,
        ).reshape(k)
        rng = np.random.default_rng(noise_seed(spec))
        z_k = rng.standard_normal(k)
        # z_0 (drawn first) belongs to the final loss, so it does not depend on curve_points.
        z_k = np.concatenate([z_k[1:], z_k[:1]])
        loss_k = clean_k * np.exp(sim.noise * z_k)
        final_loss = float(loss_k[-1])

        curve = []
        for i in range(k):
            step = i + 1
            lr = lr_at(i, k, optim)
            point = CurvePoint(
                step=step, tokens=int(tokens_k[i]), train_loss=float(loss_k[i]), lr=lr
            )
            curve.append(point)
            sink.log_metrics(
                {"train_loss": point.train_loss, "lr": lr, "tokens": point.tokens}, step=step
            )
            if sim.sleep_s > 0:
                time.sleep(sim.sleep_s / k)
        sink.log_metrics({"eval_loss": final_loss, **metrics}, step=k)

        if spec.checkpoint_dir:  # its "model" for the runs that start from it: the final loss
            write_result(spec.checkpoint_dir, spec.run_key, final_loss)
        wall = sim.overhead_s + plan.flops / sim.flops_per_second
        return RunResult(
            run_key=spec.run_key,
            plan=plan,
            final_loss=final_loss,
            eval_losses={},
            metrics=metrics,
            curve=tuple(curve),
            wall_time_s=wall,
            tokens_per_s=d / wall if wall > 0 and math.isfinite(wall) else 0.0,
        )
