"""The dense GPT trainer: real models on offline byte-level text, one run per call.

Each ``train`` call builds the model its target N resolves to (``trainers.shapes``), trains it
with AdamW on the run's domain mixture (``trainers.data``) under the configured schedule
(``trainers.schedule``), then scores held-out windows of every domain. The loop does no host
synchronisation between log points, so it runs as fast as a bare PyTorch loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import torch

from trainers.base import (
    CurvePoint,
    MetricSink,
    RunPlan,
    RunPoint,
    RunResult,
    RunSpec,
    Trainer,
    TrainingDiverged,
)
from trainers.config import TrainerConfig
from trainers.data import (
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
    shape = derive_shape(point.n_params, config)
    total, non_embedding = count_params(shape, config)
    tokens_per_step = config.batch_size * config.seq_len
    steps = max(1, round(point.tokens / tokens_per_step))
    per_token = flops_per_token(shape, config)
    return RunPlan(
        shape=shape,
        n_params=total,
        n_params_non_embedding=non_embedding,
        n_params_active=total,
        flops_per_token=per_token,
        tokens=steps * tokens_per_step,
        steps=steps,
        flops=per_token * steps * tokens_per_step,
        flop_convention=config.flop_convention,
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_optimizer(model: torch.nn.Module, config: TrainerConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT: norms' weights are not decayed)."""
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


class DenseTrainer(Trainer):
    """Trains the dense GPT of ``trainers.model`` (kind ``dense``)."""

    kind = "dense"

    def plan(self, point: RunPoint) -> RunPlan:
        """Exact size and cost; see ``plan_dense``."""
        return plan_dense(point, self.config)

    def train(self, spec: RunSpec, sink: MetricSink) -> RunResult:
        """Train ``spec`` to completion; deterministic on CPU for a given spec and thread count."""
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
        plan = plan_dense(spec.point, config)
        assert plan.shape is not None
        domains = load_domains(config.data)
        weights = mixture_weights(spec.point.mixture, len(domains))

        torch.manual_seed(spec.seed)
        model = GPT(plan.shape, config.model).to(device)
        optimizer = build_optimizer(model, config)
        sampler = MixtureSampler(
            list(domains.values()),
            weights,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            generator=torch.Generator().manual_seed(spec.seed),
        )
        curve, train_seconds = self._loop(
            model, optimizer, iter(sampler), plan, config, device, sink
        )

        eval_losses = {
            name: evaluate(
                model,
                eval_windows(domain, eval_tokens=config.data.eval_tokens, seq_len=config.seq_len),
                device,
            )
            for name, domain in domains.items()
        }
        if not all(math.isfinite(v) for v in eval_losses.values()):
            raise TrainingDiverged(f"run {spec.run_key}: non-finite held-out loss {eval_losses}")
        final_loss = sum(w * eval_losses[name] for w, name in zip(weights, domains, strict=True))
        sink.log_metrics(
            {"eval_loss": final_loss, **{f"eval_loss/{k}": v for k, v in eval_losses.items()}},
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
        )

    @staticmethod
    def _loop(
        model: GPT,
        optimizer: torch.optim.Optimizer,
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        plan: RunPlan,
        config: TrainerConfig,
        device: torch.device,
        sink: MetricSink,
    ) -> tuple[list[CurvePoint], float]:
        """The optimisation loop; returns the logged curve and its wall time in seconds."""
        params = [p for p in model.parameters() if p.requires_grad]
        tokens_per_step = config.batch_size * config.seq_len
        log_every = max(1, config.log_every)
        clip = config.optim.grad_clip
        curve: list[CurvePoint] = []
        model.train()
        started = time.perf_counter()
        for step in range(plan.steps):
            lr = lr_at(step, plan.steps, config.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs_bt, targets_bt = next(batches)
            inputs_bt = inputs_bt.to(device, non_blocking=True)
            targets_bt = targets_bt.to(device, non_blocking=True)
            with _autocast(device):
                loss = lm_loss(model(inputs_bt), targets_bt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            done = step + 1
            # Only log points synchronise with the device; NaN weights stay NaN, so a divergence
            # between log points is still caught at the next one.
            if done % log_every == 0 or done == plan.steps:
                value = loss.item()
                if not math.isfinite(value):
                    raise TrainingDiverged(f"training loss {value} at step {done}")
                tokens = done * tokens_per_step
                curve.append(CurvePoint(step=done, tokens=tokens, train_loss=value, lr=lr))
                sink.log_metrics({"train_loss": value, "lr": lr, "tokens": tokens}, step=done)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return curve, time.perf_counter() - started
