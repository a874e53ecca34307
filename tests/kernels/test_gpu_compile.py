"""The kernels compile for an H100 (sm_90) without a GPU (``kernels.gpu_compile_check``).

The interpreter tests check the arithmetic; this catches what only the GPU compiler rejects.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernel tests compile for real")
@pytest.mark.skipif(not PTXAS.exists(), reason="this Triton build ships no ptxas")
def test_kernels_compile_for_sm90() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.gpu_compile_check", "--quick", "--head-dims", "64"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all configurations compiled for sm_90" in proc.stdout
    assert proc.stdout.count(" k=64 causal=True") == 4
