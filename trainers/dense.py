"""The dense GPT trainer: real models on offline byte-level text, one run per call.

Each ``train`` call builds the model its target N resolves to (``trainers.shapes``), trains it
with AdamW on the run's domain mixture (``trainers.data``) under the configured schedule
(``trainers.schedule``), then scores held-out windows of every domain. The loop does no host
synchronisation between log points, so it runs as fast as a bare PyTorch loop
(``benchmarks/trainer_throughput.py``).

Data parallelism: when ``torch.distributed`` is initialised (``orchestrator.parallel`` starts
the workers through Ray Train), every worker draws the same global batch, trains on its share of
the rows through ``DistributedDataParallel`` (gradients averaged), and only rank 0 writes
checkpoints; a dense run ends as the single-process run does, up to floating-point summation
order (an MoE run's load-balancing loss is each worker's own share's, as per device in Switch
Transformer, so it differs slightly).

Options of every run: checkpoints and exact resume (``RunSpec.checkpoint_dir``,
``trainers.checkpoint``); held-out evaluation of every domain along the way
(``TrainerConfig.eval_every``); and finetuning, starting from the weights of a finished run
(``RunSpec.init_checkpoint``) with a mixture that holds the target domain and, as injection, a
share p of the pretraining domains, so the forgetting law (Béthune et al. 2025) can be fitted
on the logged per-domain losses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from trainers.base import (
    CurvePoint,
    MetricSink,
    ModelShape,
    RunPlan,
    RunPoint,
    RunResult,
    RunSpec,
    Trainer,
    TrainingDiverged,
)
from trainers.batch_scaling import at_batch_size, scaled_recipe
from trainers.checkpoint import (
    TrainState,
    checkpoint_path,
    kept_checkpoint_path,
    load_branch_point,
    load_checkpoint,
    load_checkpoint_shape,
    load_model_state,
    save_checkpoint,
)
from trainers.config import TrainerConfig
from trainers.data import (
    DomainText,
    MixtureSampler,
    domains_of,
    eval_windows,
    load_domains,
    mixture_weights,
)
from trainers.flops import flops_per_token
from trainers.model import GPT, lm_loss
from trainers.schedule import lr_at
from trainers.shapes import count_params, derive_shape

#: Held-out windows scored per forward pass at the end of a run.
EVAL_BATCH = 32


def plan_dense(point: RunPoint, config: TrainerConfig) -> RunPlan:
    """Shape, exact counts, whole steps and FLOPs of a dense run; no data or device is touched."""
    if point.tokens < 1:
        raise ValueError(f"tokens: must be a positive integer, got {point.tokens}")
    if point.sparsity:
        raise ValueError(f"sparsity: the dense trainer trains dense models, got {point.sparsity}")
    mixture_weights(point.mixture, len(domains_of(config.data)))
    return plan_for_shape(derive_shape(point.n_params, config), point, config)


def plan_for_shape(shape: ModelShape, point: RunPoint, config: TrainerConfig, n_active: int | None = None) -> RunPlan:
    """The plan of a run of ``point.tokens`` tokens (rounded to whole steps) on a model of
    ``shape``: exact counts (``n_active``: active parameters, default all) and FLOPs."""
    total, non_embedding = count_params(shape, config)
    tokens_per_step = config.batch_size * config.seq_len
    steps = max(1, round(point.tokens / tokens_per_step))
    per_token = flops_per_token(shape, config)
    return RunPlan(
        shape=shape,
        n_params=total,
        n_params_non_embedding=non_embedding,
        n_params_active=total if n_active is None else n_active,
        flops_per_token=per_token,
        tokens=steps * tokens_per_step,
        steps=steps,
        flops=per_token * steps * tokens_per_step,
        flop_convention=config.flop_convention,
    )


def data_parallel() -> tuple[int, int]:
    """This process's rank and the number of data-parallel workers (0, 1 without
    ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def check_divisible(batch_size: int, workers: int) -> None:
    """Every data-parallel worker trains an equal share of each batch."""
    if workers > 1 and batch_size % workers:
        raise ValueError(
            f"trainer.batch_size: {batch_size} sequences cannot be split evenly among {workers} "
            "data-parallel workers"
        )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside ``torch.compile`` and ``DistributedDataParallel`` wrappers (or
    ``model`` itself)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def compiles(config: TrainerConfig, device: torch.device) -> bool:
    """Whether the training step runs through ``torch.compile`` (``TrainerConfig.compile``)."""
    if config.compile is None:
        return device.type == "cuda"
    return config.compile


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_optimizer(model: torch.nn.Module, config: TrainerConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT: norms' weights are not decayed).

    Takes ``config.optim`` as it is: a run hands in its recipe at its own batch size
    (``trainers.batch_scaling.at_batch_size``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optim = config.optim
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=optim.lr,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
        # One fused kernel per step instead of a loop over tensors, on CUDA and on CPU (where it
        # is several times faster than the default per-tensor loop for these small models).
        fused=True,
    )


def _ema_state(ema: ModelEMA | None) -> dict[str, object]:
    if ema is None:
        return {}
    weights, steps = ema.state()
    return {"ema": weights, "ema_steps": steps}


def _autocast(device: torch.device) -> AbstractContextManager[object]:
    # bf16 autocast on CUDA (no loss scaling needed); fp32 on CPU, where bf16 matmuls are slower.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: GPT, windows_nt: torch.Tensor, device: torch.device) -> float:
    """Mean held-out loss in nats/token over windows (n, t + 1)."""
    model.eval()
    total, count = torch.zeros((), device=device, dtype=torch.float64), 0
    for chunk_bt in windows_nt.split(EVAL_BATCH):
        chunk_bt = chunk_bt.to(device, non_blocking=True)
        with _autocast(device):
            logits_btv = model(chunk_bt[:, :-1])
        targets_bt = chunk_bt[:, 1:]
        total += lm_loss(logits_btv, targets_bt).double() * targets_bt.numel()
        count += targets_bt.numel()
    model.train()
    return float(total) / count


def _global_mean(loss: torch.Tensor, workers: int) -> float:
    """The batch's mean loss over all data-parallel workers (each holds its share's mean)."""
    if workers == 1:
        return loss.item()
    total = loss.detach().double().clone()
    torch.distributed.all_reduce(total)
    return total.item() / workers


#: A training objective: (model, inputs_bt, targets_bt) -> scalar loss to minimise.
LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Loop:
    """What the optimisation loop works on."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    sampler: MixtureSampler
    loss_fn: LossFn
    plan: RunPlan
    config: TrainerConfig
    device: torch.device
    sink: MetricSink
    log_eval: Callable[[int], None]  # scores every domain's held-out split and logs it
    ema: ModelEMA | None = None
    # data parallelism: the module the loss runs through (a DistributedDataParallel wrapper of
    # ``model``), this worker's rank and the number of workers
    net: torch.nn.Module | None = None
    rank: int = 0
    workers: int = 1


def weighted_loss(losses: Mapping[str, float], weights: Sequence[float]) -> float:
    """The mixture-weighted loss of per-domain ``losses`` (domain order = ``weights`` order)."""
    return sum(w * loss for w, loss in zip(weights, losses.values(), strict=True))


def ema_momentum(config: TrainerConfig) -> float:
    """The EMA momentum at this run's batch size: the EMA scaling rule (Busbridge et al. 2023),
    rho ** (B / B_ref), keeps the EMA's horizon in samples fixed when the batch size changes
    (``trainers.batch_scaling``)."""
    return scaled_recipe(config).ema


class ModelEMA:
    """An exponential moving average of a model's parameters (``torch.optim.swa_utils``).

    Buffers are not averaged but follow the live model (sigmaReparam's power-iteration vectors
    are estimates for the current weights, and averaged unit vectors would not be unit vectors).
    """

    def __init__(self, model: torch.nn.Module, momentum: float) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.momentum = momentum
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(momentum), use_buffers=False)

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.averaged.update_parameters(model)
        for mine, live in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(live)

    def state(self) -> tuple[dict[str, object], int]:
        return self.module.state_dict(), int(self.averaged.n_averaged.item())

    def load(self, weights: Mapping[str, object], steps: int) -> None:
        self.module.load_state_dict(weights)
        self.averaged.n_averaged.fill_(steps)


def branch_point(spec: RunSpec, plan: RunPlan) -> TrainState:
    """The trunk's state a cooldown branch continues from (``RunSpec.branch_from``)."""
    state = load_branch_point(spec.branch_from)
    if state.shape != plan.shape:
        raise ValueError(
            f"branch_from: {spec.branch_from} holds a model of shape {state.shape}, but this run "
            f"trains {plan.shape}"
        )
    if state.step >= plan.steps:
        raise ValueError(f"branch_from: {spec.branch_from} is at step {state.step}, past this run's {plan.steps} steps")
    return state


def init_weights(model: GPT, checkpoint: str, plan: RunPlan) -> None:
    """Start ``model`` from the weights of a finished run (finetuning); shapes must match."""
    saved = load_checkpoint_shape(checkpoint)
    if saved != plan.shape:
        raise ValueError(
            f"init_checkpoint: {checkpoint} holds a model of shape {saved}, but this run trains "
            f"{plan.shape}; give the finetuning run the pretrained run's size"
        )
    model.load_state_dict(load_model_state(checkpoint)[0])


def evaluate_domains(
    model: GPT, domains: Mapping[str, DomainText], config: TrainerConfig, device: torch.device
) -> dict[str, float]:
    """Held-out loss (nats/token) of ``model`` on every domain, by name."""
    return {
        name: evaluate(
            model,
            eval_windows(domain, eval_tokens=config.data.eval_tokens, seq_len=config.seq_len),
            device,
        )
        for name, domain in domains.items()
    }


class DenseTrainer(Trainer):
    """Trains the dense GPT of ``trainers.model`` (kind ``dense``).

    Subclasses change what is trained through three hooks: ``plan_run`` (size and cost of a
    point under a configuration), ``build_model`` (the network) and ``make_loss`` (the training
    objective, a function of the model and one batch).
    """

    kind = "dense"

    def plan(self, point: RunPoint) -> RunPlan:
        """Exact size and cost under this trainer's configuration."""
        return self.plan_run(point, self.config)

    def plan_run(self, point: RunPoint, config: TrainerConfig) -> RunPlan:
        """Exact size and cost of ``point`` under ``config``; see ``plan_dense``."""
        return plan_dense(point, config)

    def build_model(self, spec: RunSpec, plan: RunPlan) -> GPT:
        """The network to train, initialised from the global torch seed (set by ``train``)."""
        assert plan.shape is not None
        return GPT(plan.shape, spec.trainer.model)

    def make_loss(self, spec: RunSpec, device: torch.device) -> LossFn:
        """The training objective: next-token cross-entropy."""
        return lambda model, inputs_bt, targets_bt: lm_loss(model(inputs_bt), targets_bt)

    def extra_metrics(
        self,
        spec: RunSpec,
        domains: Mapping[str, DomainText],
        weights: Sequence[float],
        device: torch.device,
    ) -> dict[str, float]:
        """Further end-of-run metrics of a trainer kind (``RunResult.metrics``); none here."""
        return {}

    def train(self, spec: RunSpec, sink: MetricSink) -> RunResult:
        """Train ``spec`` to completion; deterministic on CPU for a given spec and thread count.

        With ``spec.checkpoint_dir`` set, checkpoints are written along the way and a checkpoint
        of the same run found there is resumed from (``trainers.checkpoint``).
        """
        config = spec.trainer
        device = resolve_device(config.device)
        previous_threads = torch.get_num_threads()
        if device.type == "cpu":
            torch.set_num_threads(config.threads)
        try:
            return self._train(spec, sink, config, device)
        finally:
            torch.set_num_threads(previous_threads)

    def _train(
        self, spec: RunSpec, sink: MetricSink, config: TrainerConfig, device: torch.device
    ) -> RunResult:
        started = time.perf_counter()
        recipe = scaled_recipe(config)
        # From here on the recipe is the one at this run's batch size (trainers.batch_scaling).
        config = at_batch_size(config)
        plan = self.plan_run(spec.point, config)
        rank, workers = data_parallel()
        check_divisible(config.batch_size, workers)
        domains = load_domains(config.data)
        weights = mixture_weights(spec.point.mixture, len(domains))

        torch.manual_seed(spec.seed)
        model = self.build_model(spec, plan).to(device)
        optimizer = build_optimizer(model, config)
        sampler = MixtureSampler(
            list(domains.values()),
            weights,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            generator=torch.Generator().manual_seed(spec.seed),
        )
        loss_fn = self.make_loss(spec, device)
        state = None
        ckpt = checkpoint_path(spec.checkpoint_dir) if spec.checkpoint_dir else None
        if ckpt is not None:
            state = load_checkpoint(ckpt, spec.run_key)
        if state is None and spec.branch_from:
            state = branch_point(spec, plan)
        if state is not None:
            model.load_state_dict(state.model)
            optimizer.load_state_dict(state.optimizer)
            sampler.load_state_dict(state.sampler)
        elif spec.init_checkpoint:
            init_weights(model, spec.init_checkpoint, plan)
        ema = ModelEMA(model, ema_momentum(config)) if config.optim.ema > 0 else None
        if ema is not None and state is not None and state.ema is not None:
            ema.load(state.ema, state.ema_steps)
        # held-out losses are the EMA's when the run keeps one
        scored = ema.module if ema is not None else model
        net: torch.nn.Module | None = None
        if workers > 1:  # the same initial weights everywhere (same seed), gradients averaged
            ids = [device] if device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if compiles(config, device):  # the training step only; evaluation runs eagerly
            net = torch.compile(net if net is not None else model)

        pretrain_weights = mixture_weights(spec.init_mixture, len(domains)) if spec.init_mixture else None

        def pretrain_loss(losses: Mapping[str, float]) -> dict[str, float]:
            if pretrain_weights is None:
                return {}
            return {"pretrain_loss": weighted_loss(losses, pretrain_weights)}

        def log_eval(step: int) -> None:
            losses = evaluate_domains(scored, domains, config, device)
            sink.log_metrics({**{f"eval_loss/{k}": v for k, v in losses.items()}, **pretrain_loss(losses)}, step=step)

        if state is None and config.eval_every > 0:
            log_eval(0)  # where the run starts from (the pretrained model when finetuning)
        curve, train_seconds = self._loop(
            _Loop(model, optimizer, sampler, loss_fn, plan, config, device, sink, log_eval, ema, net, rank, workers),
            state,
            spec,
            ckpt,
        )

        eval_losses = evaluate_domains(scored, domains, config, device)
        if not all(math.isfinite(v) for v in eval_losses.values()):
            raise TrainingDiverged(f"run {spec.run_key}: non-finite held-out loss {eval_losses}")
        final_loss = weighted_loss(eval_losses, weights)
        extra = {**self.extra_metrics(spec, domains, weights, device), **pretrain_loss(eval_losses)}
        if spec.trainer.optim.reference_batch_size is not None:  # what the scaling rule set
            extra.update(recipe.metrics())
        if ema is not None:  # what the EMA bought: the live model's loss next to it
            raw = evaluate_domains(model, domains, config, device)
            extra["raw_eval_loss"] = weighted_loss(raw, weights)
        sink.log_metrics(
            {
                "eval_loss": final_loss,
                **{f"eval_loss/{k}": v for k, v in eval_losses.items()},
                **extra,
            },
            step=plan.steps,
        )
        return RunResult(
            run_key=spec.run_key,
            plan=plan,
            final_loss=final_loss,
            eval_losses=eval_losses,
            curve=tuple(curve),
            wall_time_s=time.perf_counter() - started,
            tokens_per_s=plan.tokens / train_seconds if train_seconds > 0 else 0.0,
            metrics=extra,
        )

    @staticmethod
    def _loop(
        run: _Loop, state: TrainState | None, spec: RunSpec, ckpt: Path | None
    ) -> tuple[list[CurvePoint], float]:
        """The optimisation loop from ``state`` (or step 0) to the plan's last step.

        Returns the whole logged curve and the training seconds of every attempt together.
        """
        model, optimizer, config, plan = run.model, run.optimizer, run.config, run.plan
        assert plan.shape is not None  # real models only
        forward = run.net if run.net is not None else model
        share = config.batch_size // run.workers
        rows = slice(run.rank * share, (run.rank + 1) * share)
        writer = run.rank == 0  # one worker writes the checkpoints
        params = [p for p in model.parameters() if p.requires_grad]
        batches = iter(run.sampler)
        tokens_per_step = config.batch_size * config.seq_len
        log_every = max(1, config.log_every)
        save_every = spec.checkpoint_every if spec.checkpoint_every > 0 else log_every
        clip = config.optim.grad_clip
        eval_every = config.eval_every
        first = state.step if state is not None else 0
        curve = list(state.curve) if state is not None else []
        earlier_seconds = state.train_seconds if state is not None else 0.0
        model.train()
        started = time.perf_counter()
        for step in range(first, plan.steps):
            lr = lr_at(step, plan.steps, config.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs_bt, targets_bt = next(batches)  # the global batch; this worker's rows
            inputs_bt = inputs_bt[rows].to(run.device, non_blocking=True)
            targets_bt = targets_bt[rows].to(run.device, non_blocking=True)
            with _autocast(run.device):
                loss = run.loss_fn(forward, inputs_bt, targets_bt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            if run.ema is not None:
                run.ema.update(model)
            done = step + 1
            # Only log points and checkpoints synchronise with the device; NaN weights stay NaN,
            # so a divergence between log points is still caught at the next one.
            log_now = done % log_every == 0 or done == plan.steps
            save_now = ckpt is not None and (done % save_every == 0 or done == plan.steps)
            keep_now = ckpt is not None and done in spec.keep_steps
            if log_now or save_now or keep_now:  # the same steps on every worker
                value = _global_mean(loss, run.workers)
                if not math.isfinite(value):
                    raise TrainingDiverged(f"training loss {value} at step {done}")
                if log_now:
                    tokens = done * tokens_per_step
                    curve.append(CurvePoint(step=done, tokens=tokens, train_loss=value, lr=lr))
                    run.sink.log_metrics(
                        {"train_loss": value, "lr": lr, "tokens": tokens}, step=done
                    )
                if writer and (save_now or keep_now):
                    assert ckpt is not None
                    seconds = earlier_seconds + time.perf_counter() - started
                    train_state = TrainState(
                        step=done,
                        shape=plan.shape,
                        model_config=config.model,
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                        sampler=run.sampler.state_dict(),
                        curve=tuple(curve),
                        train_seconds=seconds,
                        **_ema_state(run.ema),
                    )
                    if keep_now:  # a branch point of cooldown branches
                        save_checkpoint(kept_checkpoint_path(spec.checkpoint_dir, done), spec.run_key, train_state)
                    if save_now:
                        save_checkpoint(ckpt, spec.run_key, train_state)
            if eval_every > 0 and done % eval_every == 0 and done < plan.steps:
                eval_started = time.perf_counter()
                run.log_eval(done)
                started += time.perf_counter() - eval_started  # evaluation is not training time
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        return curve, earlier_seconds + time.perf_counter() - started
