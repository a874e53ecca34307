"""How much memory a run needs, known from its plan before it trains.

The estimate adds up what the training loop of ``trainers.dense`` keeps alive at its peak (the
end of the forward pass, when every activation autograd saved for the backward pass is held),
counted in 4-byte floats as the CPU path trains them (bf16 autocast on CUDA keeps most
activations in 2 bytes, so the estimate is an upper bound there):

- model state: weights, gradients and AdamW's two moments, 16 bytes per trainable parameter,
  plus 4 for a model EMA (``OptimConfig.ema``);
- per block, for ``T = batch_size * seq_len`` tokens of width ``d``, MLP width ``f`` and ``h``
  heads: the inputs of both norms and of every linear layer, q, k and v before and after the
  rotary embedding, the attention output, and the MLP's hidden activations before and after the
  GELU, ``T * (10 d + 2 f)`` floats; attention probabilities when PyTorch falls back to the
  unfused path, ``2 * batch * h * seq_len^2``. An MoE block holds its K active experts' hidden
  activations (``2 f K``) and the router's scores (``T * E``);
- sigmaReparam (``ModelConfig.sigma_reparam``): each reparametrised layer's normalised weight and
  its gradient (8 bytes per weight), and its output, kept for gamma's gradient
  (``T * (5 d + f)`` floats per dense block, ``T * 4 d`` with MoE experts);
- the head: the final norm's input, the logits and their log-softmax, ``T * (2 d + 2 v)``, and
  during the backward pass the logits' gradient, ``T * v`` more;
- distillation: the teacher's weights (4 bytes each) and its logits and log-softmax;
- the runtime: what PyTorch allocates on a process's first training step whatever the model
  (kernels, thread pools, allocator arenas), a constant measured on CPU with
  ``benchmarks/memory.py`` (about 170 MB for the smallest models there).

``budget`` is the stated limit: the estimate with 50 % headroom for allocator slack and the
transient buffers of the backward pass. ``benchmarks/memory.py`` measures the peak of real runs
against it (``BENCHMARKS.md``); the scheduler asks Ray for it (``resources.memory_per_run``).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.base import RunPlan
from trainers.config import TrainerConfig

FLOAT_BYTES = 4
#: budget = estimate * HEADROOM
HEADROOM = 1.5
#: PyTorch's own footprint on a process's first training step (see the module doc)
RUNTIME_BYTES = 192 * 2**20


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """Bytes a run holds at its peak, by kind."""

    model_state: int  # weights, gradients, optimiser moments (and EMA)
    activations: int  # what the blocks keep for the backward pass
    head: int  # logits, their log-softmax and gradient
    teacher: int = 0  # distillation: the teacher's weights and logits
    runtime: int = 0  # PyTorch's own footprint

    @property
    def total(self) -> int:
        return self.model_state + self.activations + self.head + self.teacher + self.runtime

    @property
    def budget(self) -> int:
        """The stated limit a run's peak must stay within (``total * HEADROOM``)."""
        return int(self.total * HEADROOM)


def estimate_memory(
    plan: RunPlan, config: TrainerConfig, *, teacher_params: int = 0, workers: int = 1
) -> MemoryEstimate:
    """The memory a run of ``plan`` needs (see the module doc); 0 for runs without a model.
    With ``workers`` data-parallel workers, what each one needs: the whole model state (data
    parallelism replicates it) and the activations of its share of the batch."""
    shape = plan.shape
    if shape is None:  # simulated and replayed runs train nothing
        return MemoryEstimate(model_state=0, activations=0, head=0)
    per_param = 16 + (4 if config.optim.ema > 0 else 0)
    batch = max(1, config.batch_size // workers)
    tokens = batch * config.seq_len
    d, f, v = shape.d_model, shape.d_ff, shape.vocab_size
    mlp = 2 * f * shape.top_k + shape.n_experts if shape.n_experts else 2 * f
    attention_probs = 2 * batch * shape.n_head * config.seq_len**2
    per_layer = tokens * (10 * d + mlp) + attention_probs
    model_state = per_param * plan.n_params
    if config.model.sigma_reparam:
        outputs = 4 * d if shape.n_experts else 5 * d + f
        per_layer += tokens * outputs
        weights = 4 * d * d + (0 if shape.n_experts else 2 * d * f)
        model_state += 8 * shape.n_layer * weights
    teacher = 0
    if teacher_params:
        teacher = FLOAT_BYTES * (teacher_params + 2 * tokens * v)
    return MemoryEstimate(
        model_state=model_state,
        activations=FLOAT_BYTES * shape.n_layer * per_layer,
        head=FLOAT_BYTES * tokens * (2 * d + 3 * v),
        teacher=teacher,
        runtime=RUNTIME_BYTES,
    )
