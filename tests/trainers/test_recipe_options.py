"""Training-recipe options: sigmaReparam layers and a model EMA that follows the scaling rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.trainers.conftest import RecordingSink
from trainers.base import RunPoint, RunSpec
from trainers.checkpoint import load_model_state
from trainers.config import ModelConfig, OptimConfig, TrainerConfig
from trainers.dense import DenseTrainer, ema_momentum
from trainers.model import GPT, SigmaReparam
from trainers.moe import MoE
from trainers.shapes import count_params, derive_shape

ConfigFactory = Callable[..., TrainerConfig]
SIGMA = ModelConfig(head_dim=16, aspect_ratio=16.0, sigma_reparam=True)


def _spec(config: TrainerConfig, steps: int, **fields: object) -> RunSpec:
    point = RunPoint(n_params=12_000, tokens=steps * config.batch_size * config.seq_len)
    return RunSpec(run_key="recipe", study="test", seed=3, point=point, trainer=config, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind_experts", [0, 4])
def test_sigma_reparam_counts_are_exact(kind_experts: int) -> None:
    config = TrainerConfig(seq_len=64, kind="moe" if kind_experts else "dense", model=SIGMA)
    for n_target in (12_000, 1e5):
        shape = derive_shape(int(n_target), config)
        if kind_experts:
            shape = replace(shape, n_experts=kind_experts, top_k=2)
        model = GPT(shape, config.model)
        total = sum(p.numel() for p in model.parameters())
        assert count_params(shape, config)[0] == total
        wrapped = [m for m in model.modules() if isinstance(m, SigmaReparam)]
        assert len(wrapped) == shape.n_layer * (2 if kind_experts else 4)
        assert not kind_experts or any(isinstance(m, MoE) for m in model.modules())


def test_sigma_reparam_starts_as_the_plain_layer_and_keeps_gamma_as_the_spectral_norm() -> None:
    shape = derive_shape(12_000, TrainerConfig(seq_len=32, model=SIGMA))
    torch.manual_seed(0)
    plain = GPT(shape, replace(SIGMA, sigma_reparam=False))
    torch.manual_seed(0)
    reparam = GPT(shape, SIGMA).eval()
    x = torch.randint(0, 256, (2, 32))
    # gamma starts at sigma(W): the reparametrised network computes what the plain one does
    torch.testing.assert_close(reparam(x), plain(x), rtol=1e-3, atol=1e-3)
    layer = reparam.blocks[0].attn.qkv
    assert isinstance(layer, SigmaReparam)
    with torch.no_grad():
        layer.linear.parametrizations.weight.original.mul_(3.0)  # scale W: W_hat must not change
        layer.train()
        for _ in range(30):  # power iterations catch up with the new W
            layer(torch.zeros(1, shape.d_model))
        layer.eval()
        effective = layer.gamma * layer.linear.weight
        assert torch.linalg.matrix_norm(effective, ord=2) == pytest.approx(layer.gamma.item(), rel=1e-3)


def test_sigma_reparam_trains_and_resumes_exactly(tiny_config: ConfigFactory, tmp_path: Path) -> None:
    config = tiny_config(model=SIGMA)
    trainer = DenseTrainer(config)
    sink = RecordingSink()
    whole = trainer.train(_spec(config, 30), sink)
    losses = [m["train_loss"] for _, m in sink.calls if "train_loss" in m]
    assert losses[-1] < losses[0] - 0.5
    split = _spec(config, 30, checkpoint_dir=str(tmp_path), checkpoint_every=10)

    class Stop(RuntimeError):
        pass

    class StopAt20(RecordingSink):
        def log_metrics(self, metrics, *, step):  # noqa: ANN001
            if "train_loss" in metrics and step == 25:
                raise Stop
            super().log_metrics(metrics, step=step)

    with pytest.raises(Stop):
        trainer.train(split, StopAt20())
    resumed = trainer.train(split, RecordingSink())
    # the power-iteration vectors are buffers in the checkpoint: the resumed run is the same run
    assert resumed.final_loss == whole.final_loss and resumed.curve == whole.curve


def test_ema_momentum_follows_the_scaling_rule() -> None:
    base = TrainerConfig(batch_size=16, optim=OptimConfig(ema=0.99, ema_batch_size=16))
    assert ema_momentum(base) == 0.99
    assert ema_momentum(replace(base, batch_size=64)) == pytest.approx(0.99**4)
    assert ema_momentum(replace(base, batch_size=4)) == pytest.approx(0.99**0.25)
    own = TrainerConfig(batch_size=8, optim=OptimConfig(ema=0.9))  # reference = its own batch
    assert ema_momentum(own) == 0.9


def test_ema_scores_the_average_resumes_exactly_and_is_the_model_others_load(
    tiny_config: ConfigFactory, tmp_path: Path
) -> None:
    optim = OptimConfig(ema=0.9)
    config = tiny_config(optim=optim)
    trainer = DenseTrainer(config)
    result = trainer.train(_spec(config, 30, checkpoint_dir=str(tmp_path / "a")), RecordingSink())
    assert result.metrics["raw_eval_loss"] != result.final_loss  # the EMA is not the live model
    # the checkpoint hands the EMA's weights to whoever starts from this run
    weights, _ = load_model_state(tmp_path / "a")
    model = GPT(result.plan.shape, config.model)
    model.load_state_dict(weights)
    from trainers.data import load_domains
    from trainers.dense import evaluate_domains

    losses = evaluate_domains(model, load_domains(config.data), config, torch.device("cpu"))
    assert sum(losses.values()) / len(losses) == pytest.approx(result.final_loss, rel=1e-6)
    # momentum 0: the average is the live model
    zero = tiny_config(optim=OptimConfig(ema=1e-12))
    r0 = DenseTrainer(zero).train(_spec(zero, 20), RecordingSink())
    assert r0.metrics["raw_eval_loss"] == pytest.approx(r0.final_loss, rel=1e-5)
    # resume from step 20 of 30: the EMA state travels in the checkpoint
    split = _spec(config, 30, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=10)

    class Stop(RuntimeError):
        pass

    class StopAt25(RecordingSink):
        def log_metrics(self, metrics, *, step):  # noqa: ANN001
            if "train_loss" in metrics and step == 25:
                raise Stop
            super().log_metrics(metrics, step=step)

    with pytest.raises(Stop):
        trainer.train(split, StopAt25())
    resumed = trainer.train(split, RecordingSink())
    assert resumed.final_loss == result.final_loss and resumed.metrics == result.metrics


def test_compile_wraps_the_training_step_where_asked(
    tiny_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.grid import run_key
    from trainers.dense import compiles

    compiled: list[torch.nn.Module] = []

    def spy(module: torch.nn.Module) -> torch.nn.Module:
        compiled.append(module)
        return module  # eager: only the wiring is under test on CPU

    monkeypatch.setattr(torch, "compile", spy)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not compiles(tiny_config(), cpu) and compiles(tiny_config(), cuda)  # default: CUDA only
    assert not compiles(tiny_config(compile=False), cuda) and compiles(tiny_config(compile=True), cpu)

    plain = DenseTrainer(tiny_config()).train(_spec(tiny_config(), 6), RecordingSink())
    assert compiled == []
    forced = DenseTrainer(tiny_config(compile=True)).train(_spec(tiny_config(compile=True), 6), RecordingSink())
    assert len(compiled) == 1 and isinstance(compiled[0], GPT)
    assert forced.final_loss == plain.final_loss  # the same run, so the same identity
    point = _spec(tiny_config(), 6).point
    assert run_key(point, tiny_config(), 0) == run_key(point, tiny_config(compile=True), 0)


@pytest.fixture
def traced_compile(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """``torch.compile`` for real through TorchDynamo and AOTAutograd (forward and backward
    graphs), with the ``aot_eager`` backend so that no C++ compiler is needed and the numbers
    stay bit-identical to eager; returns Dynamo's graph-break counts by reason."""
    import functools

    import torch._dynamo as dynamo

    dynamo.reset()
    dynamo.utils.counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    yield dynamo.utils.counters["graph_break"]
    dynamo.reset()


@pytest.mark.parametrize(
    "model",
    [
        ModelConfig(head_dim=16, aspect_ratio=16.0),
        ModelConfig(head_dim=16, aspect_ratio=16.0, attention="sigmoid"),
        SIGMA,
    ],
    ids=["softmax", "sigmoid", "sigma_reparam"],
)
def test_the_compiled_training_step_is_one_graph_and_trains_as_eager(
    tiny_config: ConfigFactory, traced_compile: dict[str, int], model: ModelConfig
) -> None:
    """The GPU path's ``torch.compile`` traces every dense recipe whole (no graph break, which
    would leave the step half eager) and trains exactly as the eager step does."""
    import torch._dynamo as dynamo

    eager_config, compiled_config = tiny_config(model=model, compile=False), tiny_config(model=model, compile=True)
    with torch._dynamo.config.patch(suppress_errors=False):
        eager = DenseTrainer(eager_config).train(_spec(eager_config, 6), RecordingSink())
        assert dynamo.utils.counters["stats"]["unique_graphs"] == 0
        compiled = DenseTrainer(compiled_config).train(_spec(compiled_config, 6), RecordingSink())
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert dict(traced_compile) == {}
    assert compiled.final_loss == eager.final_loss
    assert [p.train_loss for p in compiled.curve] == [p.train_loss for p in eager.curve]


def test_the_compiled_moe_step_breaks_only_at_the_expert_split(
    tiny_config: ConfigFactory, traced_compile: dict[str, int]
) -> None:
    """Under ``torch.compile`` the MoE dispatch reads the E slice sizes once per layer (the one
    data-dependent step, see ``trainers.moe``): those are its only graph breaks, and the
    compiled run trains exactly as the eager one."""
    from trainers.config import MoEConfig
    from trainers.sparse import MoETrainer

    def spec(config: TrainerConfig) -> RunSpec:
        point = RunPoint(n_params=40_000, tokens=6 * config.batch_size * config.seq_len, sparsity=0.5)
        return RunSpec(run_key="moe", study="test", seed=0, point=point, trainer=config)

    eager_config = tiny_config(kind="moe", moe=MoEConfig(experts=4), compile=False)
    compiled_config = replace(eager_config, compile=True)
    eager = MoETrainer(eager_config).train(spec(eager_config), RecordingSink())
    compiled = MoETrainer(compiled_config).train(spec(compiled_config), RecordingSink())
    assert compiled.final_loss == eager.final_loss
    assert traced_compile, "the expert split was expected to break the graph"
    assert all(reason.startswith("Data dependent operator") for reason in traced_compile), list(traced_compile)


@pytest.mark.parametrize(
    ("model", "experts"),
    [
        (ModelConfig(head_dim=16, aspect_ratio=16.0), 0),
        (ModelConfig(head_dim=16, aspect_ratio=16.0, attention="sigmoid"), 0),
        (SIGMA, 0),
        (ModelConfig(head_dim=16, aspect_ratio=16.0), 4),
    ],
    ids=["softmax", "sigmoid", "sigma_reparam", "moe"],
)
def test_every_block_trains_under_bf16_autocast(model: ModelConfig, experts: int) -> None:
    """The GPU path's bf16 autocast, with CPU autocast standing in for CUDA's (the same op
    lists send matmuls to bf16): every block kind runs forward and backward in mixed precision
    (no dtype clash in attention, expert dispatch or sigmaReparam), its loss within bf16's
    precision of the float32 loss, every gradient finite."""
    from trainers.model import lm_loss

    config = TrainerConfig(seq_len=32, kind="moe" if experts else "dense", model=model)
    shape = derive_shape(40_000, config)
    if experts:
        shape = replace(shape, n_experts=experts, top_k=2)
    torch.manual_seed(0)
    net = GPT(shape, model)
    tokens = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(tokens[:, :-1])
        mixed = lm_loss(logits, tokens[:, 1:])
    assert logits.dtype == torch.bfloat16
    mixed.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    with torch.no_grad():
        full = lm_loss(net(tokens[:, :-1]), tokens[:, 1:])
    assert abs(mixed.item() - full.item()) < 1e-2 * full.item()
