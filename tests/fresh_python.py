"""Run Python in a fresh interpreter from the repository root, for tests that need a clean process.

Why a fresh process: Triton's interpreter is chosen when Triton is imported, and some PyTorch
state (the default SDPA order) is set once per process, so an earlier test would hide the problem.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(args: list[str], **env: str) -> str:
    """stdout of ``python *args`` run in REPO, REPO importable, ``env`` added; a non-zero exit fails the test.

    REPO goes in front of the caller's PYTHONPATH, not in its place: dependencies installed with
    ``pip --target`` (as on the GPU machine) are found through it.
    """
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    environment = dict(os.environ, PYTHONPATH=path, **env)
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
