"""The environment explains itself: importing triton before fa2bench on a CPU-only machine is one clear line
(and fa2bench's kernel providers say why they are unavailable), not a cryptic InterpreterError later; the
package declares what it imports."""
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch

from tests import fresh

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is only used without a GPU")
def test_triton_imported_first_on_cpu_is_explained_in_one_line():
    code = ("import triton\nimport fa2bench\nfrom fa2bench.core import providers\n"
            "print(providers.get('fa2').availability('cpu'))")
    proc = fresh.python("-c", code)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warning) == 1 and "import fa2bench.kernels first or set TRITON_INTERPRET=1" in warning[0]
    assert "imported before fa2bench" in proc.stdout  # fa2's points are `unsupported` with that reason


def test_dependencies_declare_what_the_code_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower()
                for d in project["project"]["dependencies"]}
    assert {"rich", "numpy", "torch", "triton", "pandas", "typer"} <= declared
    assert project["build-system"]["requires"] == ["setuptools>=77"]  # the SPDX license string needs it


def test_cpu_runs_in_the_default_folder_are_ignored_by_git():
    proc = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "results/20260101T000000Z-cpu/results.csv"])
    if proc.returncode == 128:
        pytest.skip("not a git checkout")
    assert proc.returncode == 0
