"""Suite-wide setup.

Triton's CPU interpreter must be switched on before any module defining kernels is imported, so it
is decided here, once, before test collection imports ``kernels``. The process ends without the
interpreter's teardown (see the end of this file; ``ISOFLOP_TEST_TEARDOWN=1`` keeps it).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# Two cores on CI: keep each test process from oversubscribing them.
torch.set_num_threads(min(2, torch.get_num_threads()))


# Leaving the interpreter after the session: native libraries this suite loads in-process (torch's
# thread pools, Triton's interpreter, Ray's core worker, gRPC) run static destructors in an order
# that can crash once every test has passed and the summary is printed (a CI run ended "988
# passed" and then "Segmentation fault", exit 139, unreproduced in two further full runs). Nothing
# is left to do by then, so the process ends with pytest's own exit status without the teardown.
_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """After every other plugin's unconfigure (the terminal summary is long printed)."""
    if _EXIT_STATUS in config.stash and os.environ.get("ISOFLOP_TEST_TEARDOWN") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])
