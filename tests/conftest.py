"""Suite-wide setup.

Triton's CPU interpreter must be switched on before any module defining kernels is imported, so it
is decided here, once, before test collection imports ``kernels``.
"""

from __future__ import annotations

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# Two cores on CI: keep each test process from oversubscribing them.
torch.set_num_threads(min(2, torch.get_num_threads()))
