"""dev/setup.sh: torch installed pinned, with the user's extra pip options when given (e.g. the
CPU-only wheel index), and the plain install otherwise. Run against a stand-in pip that logs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pip_calls(tmp_path: Path, extra: dict) -> list[str]:
    shutil.copytree(ROOT / "dev", tmp_path / "dev")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text("#!/bin/sh\n")
    (bin_dir / "pip").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "pip.log"}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "FERRY_TORCH_PIP_ARGS"}
    subprocess.run(["bash", str(tmp_path / "dev" / "setup.sh")], check=True, env={**env, **extra})
    return (tmp_path / "pip.log").read_text().splitlines()


@pytest.mark.parametrize("extra, expected", [
    ({}, "install --quiet --disable-pip-version-check torch==2.13.0"),
    ({"FERRY_TORCH_PIP_ARGS": "--index-url https://download.pytorch.org/whl/cpu"},
     "install --quiet --disable-pip-version-check --index-url https://download.pytorch.org/whl/cpu torch==2.13.0"),
])
def test_torch_pip_options_from_the_environment(tmp_path, extra, expected):
    calls = pip_calls(tmp_path, extra)
    assert calls[0] == expected
    assert calls[1] == "install --quiet --disable-pip-version-check -c dev/constraints.txt -e .[test,megatron]"
