"""Run the ``fernoise`` command in a subprocess, as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def fernoise(*args: str, cwd: Path | None = None, check: bool = True, threads: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(
        [sys.executable, "-m", "fernoise", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"fernoise {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result
