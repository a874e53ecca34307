"""Values of a ``TrainerConfig`` that types alone cannot reject, checked before anything runs.

``validate_trainer_config`` is called when a study is loaded (``orchestrator.loading``, which
reports ``trainer.<key>: <message>`` and exits 2) and when a trainer is built
(``trainers.base.Trainer``), so that an impossible value fails once, up front, instead of in
every run of a study. Errors are ``ValueError("<key>: <message>")`` with the key path under the
trainer config (``distill.weight: must be in [0, 1], got 2``).

Values whose validity depends on a grid point (a size below the smallest model, a sparsity that
is not a whole number of experts) are checked by the trainers' ``plan``, which also runs at
study load.
"""

from __future__ import annotations

from trainers.config import DataConfig, TrainerConfig


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{key}: must be positive, got {value:g}")


def _at_least_zero(key: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{key}: must be 0 or more, got {value:g}")


def _in_range(key: str, value: float, low: float, high: float, *, open_high: bool = False, open_low: bool = False) -> None:
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    if not (above and below):
        interval = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
        raise ValueError(f"{key}: must be in {interval}, got {value:g}")


def _validate_data(data: DataConfig) -> None:
    from trainers.sources import SOURCES

    _in_range("data.heldout_fraction", data.heldout_fraction, 0.0, 1.0, open_low=True, open_high=True)
    _positive("data.eval_tokens", data.eval_tokens)
    for name, domain in data.domains.items():
        key = f"data.domains.{name}"
        if domain.source not in SOURCES:
            raise ValueError(
                f"{key}.source: unknown source {domain.source!r}; valid sources: {', '.join(SOURCES)}"
            )
        if domain.source == "markov":
            _in_range(f"{key}.symbols", domain.symbols, 2, 255)
            _positive(f"{key}.concentration", domain.concentration)
            _positive(f"{key}.synthetic_bytes", domain.synthetic_bytes)


def validate_trainer_config(config: TrainerConfig) -> None:
    """Raise ``ValueError("<key>: <message>")`` for the first impossible value of ``config``."""
    for key, value in {
        "seq_len": config.seq_len,
        "batch_size": config.batch_size,
        "threads": config.threads,
        "log_every": config.log_every,
    }.items():
        _positive(key, value)
    _at_least_zero("eval_every", config.eval_every)

    optim = config.optim
    _positive("optim.lr", optim.lr)
    _at_least_zero("optim.weight_decay", optim.weight_decay)
    # Adam's moment EMAs (torch.optim.AdamW accepts 0 <= beta < 1 and eps >= 0; eps = 0 can
    # divide by zero on a parameter that never gets a gradient)
    _in_range("optim.beta1", optim.beta1, 0.0, 1.0, open_high=True)
    _in_range("optim.beta2", optim.beta2, 0.0, 1.0, open_high=True)
    _positive("optim.eps", optim.eps)
    _at_least_zero("optim.grad_clip", optim.grad_clip)
    _in_range("optim.ema", optim.ema, 0.0, 1.0, open_high=True)
    _at_least_zero("optim.ema_batch_size", optim.ema_batch_size)
    _at_least_zero("optim.warmup_steps", optim.warmup_steps)
    for key in ("warmup_frac", "min_lr_frac", "cooldown_frac"):
        _in_range(f"optim.{key}", getattr(optim, key), 0.0, 1.0)
    from trainers.batch_scaling import scaled_recipe

    scaled_recipe(config)  # the reference batch size leaves valid betas at this batch size

    _positive("model.head_dim", config.model.head_dim)
    _positive("model.mlp_ratio", config.model.mlp_ratio)
    _positive("model.aspect_ratio", config.model.aspect_ratio)
    _validate_data(config.data)

    if config.moe.experts < 1:
        raise ValueError(f"moe.experts: must be at least 1, got {config.moe.experts}")
    _at_least_zero("moe.aux_loss_coef", config.moe.aux_loss_coef)

    # Busbridge et al. 2025: L = (1 - lambda) * L_NTP + lambda * L_KD at temperature tau
    _positive("distill.temperature", config.distill.temperature)
    _in_range("distill.weight", config.distill.weight, 0.0, 1.0)

    sim = config.simulated
    _at_least_zero("simulated.noise", sim.noise)
    _positive("simulated.flops_per_second", sim.flops_per_second)
    _at_least_zero("simulated.overhead_s", sim.overhead_s)
    _positive("simulated.curve_points", sim.curve_points)
    _at_least_zero("simulated.sleep_s", sim.sleep_s)
