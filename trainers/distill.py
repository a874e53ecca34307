"""The distillation trainer (kind ``distill``): a dense student trained on a teacher's logits.

The teacher is the finished run whose checkpoint ``RunSpec.teacher_checkpoint`` names (a
checkpoint records its own shape, so teacher and student may differ in size and architecture;
they share the byte vocabulary). Its logits are computed on the fly on each training batch, in
inference mode, so no logits are ever stored.

Objective (Busbridge et al. 2025, "Distillation scaling laws", section 2; Hinton et al. 2015):

    L = (1 - lambda) * L_NTP + lambda * L_KD
    L_KD = tau^2 * KL( softmax(z_T / tau) || softmax(z_S / tau) )      (mean over tokens)

with L_NTP the next-token cross-entropy on the data, z_T and z_S teacher and student logits,
``lambda = DistillConfig.weight`` and ``tau = DistillConfig.temperature`` (defaults 1 and 1:
pure distillation). The paper writes L_KD as the cross-entropy of the student against the
teacher's distribution; the KL used here differs from it by tau^2 times the teacher's entropy,
which does not depend on the student, so the gradients are the same, and a student identical
to its teacher has L_KD = 0. tau^2 keeps gradient magnitudes comparable across temperatures
(Hinton et al. 2015, section 2).

The teacher's own held-out loss L_T on every domain, the input of the distillation law, is
reported in ``RunResult.metrics`` (``teacher_eval_loss``, mixture-weighted, and
``teacher_eval_loss/<domain>``). ``RunPlan.flops`` counts the student's training only; the
teacher's forward passes cost a further F(N_T) * D_S (the paper's eq. 9 with delta_L = 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from trainers.base import RunPlan, RunPoint, RunSpec
from trainers.checkpoint import load_model
from trainers.config import DistillConfig, TrainerConfig
from trainers.data import DomainText
from trainers.dense import DenseTrainer, LossFn, evaluate_domains, plan_dense, weighted_loss
from trainers.model import GPT, lm_loss


def distillation_loss(
    student_btv: torch.Tensor, teacher_btv: torch.Tensor, temperature: float
) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), mean over tokens (fp32)."""
    tau = temperature
    log_p_student = F.log_softmax(student_btv.float().flatten(0, 1) / tau, dim=-1)
    log_p_teacher = F.log_softmax(teacher_btv.float().flatten(0, 1) / tau, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return tau * tau * kl


def distill_objective(teacher: GPT, config: DistillConfig) -> LossFn:
    """The training loss ``(1 - lambda) * L_NTP + lambda * L_KD`` of a student."""
    if not config.temperature > 0:
        raise ValueError(f"distill.temperature: must be > 0, got {config.temperature}")
    if not 0.0 <= config.weight <= 1.0:
        raise ValueError(f"distill.weight: must be in [0, 1], got {config.weight}")
    lam = config.weight

    def loss(
        model: torch.nn.Module, inputs_bt: torch.Tensor, targets_bt: torch.Tensor
    ) -> torch.Tensor:
        student_btv = model(inputs_bt)
        with torch.inference_mode():
            teacher_btv = teacher(inputs_bt)
        # Leave inference mode's tensor behind, so autograd can use it as a constant.
        kd = distillation_loss(student_btv, teacher_btv.clone(), config.temperature)
        if lam == 1.0:
            return kd
        return (1.0 - lam) * lm_loss(student_btv, targets_bt) + lam * kd

    return loss


class DistillTrainer(DenseTrainer):
    """Trains a dense student on a teacher's logits (kind ``distill``); see the module doc."""

    kind = "distill"

    def plan_run(self, point: RunPoint, config: TrainerConfig) -> RunPlan:
        """The student's size and cost (``plan_dense``); the teacher is not part of the plan."""
        return plan_dense(point, config)

    def _teacher(self, spec: RunSpec, device: torch.device) -> GPT:
        if not spec.teacher_checkpoint:
            raise ValueError(
                f"run {spec.run_key}: a distill run needs teacher_checkpoint (the checkpoint of "
                f"its teacher run {spec.point.teacher!r})"
            )
        teacher, _ = load_model(spec.teacher_checkpoint)
        if teacher.shape.seq_len < spec.trainer.seq_len:
            raise ValueError(
                f"teacher_checkpoint: the teacher was built for sequences of "
                f"{teacher.shape.seq_len} tokens, shorter than the student's {spec.trainer.seq_len}"
            )
        return teacher.to(device).eval().requires_grad_(False)

    def make_loss(self, spec: RunSpec, device: torch.device) -> LossFn:
        """``(1 - lambda) * L_NTP + lambda * L_KD`` against the spec's teacher."""
        return distill_objective(self._teacher(spec, device), spec.trainer.distill)

    def extra_metrics(
        self,
        spec: RunSpec,
        domains: Mapping[str, DomainText],
        weights: Sequence[float],
        device: torch.device,
    ) -> dict[str, float]:
        """The teacher's held-out loss L_T, per domain and mixture-weighted."""
        losses = evaluate_domains(self._teacher(spec, device), domains, spec.trainer, device)
        weighted = weighted_loss(losses, weights)
        return {
            "teacher_eval_loss": weighted,
            **{f"teacher_eval_loss/{name}": v for name, v in losses.items()},
        }
