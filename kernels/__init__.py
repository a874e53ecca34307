"""Triton kernels, each with a plain PyTorch reference of the same signature."""

from __future__ import annotations

from kernels.sigmoid_attention import sigmoid_attention, sigmoid_attention_reference

__all__ = ["sigmoid_attention", "sigmoid_attention_reference"]
