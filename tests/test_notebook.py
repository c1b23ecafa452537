"""notebooks/explore.ipynb is committed without outputs, only reads runs, and executes headless (nbclient)
against the run on disk, so it never rots."""
import pytest

from fa2bench.api import RUN_ENV
from tests.synthetic import REPO, committed_run

nbformat = pytest.importorskip("nbformat")  # the test extra installs it; the GPU image has none
NotebookClient = pytest.importorskip("nbclient").NotebookClient

NOTEBOOK = REPO / "notebooks" / "explore.ipynb"


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_committed_with_outputs_cleared(notebook):
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_notebook_only_reads_runs(notebook):
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "load_run" in code
    for forbidden in ("fa2bench.run.runner", "fa2bench.kernels", "triton", "import torch"):
        assert forbidden not in code


@pytest.mark.slow  # a Jupyter kernel executing the notebook
def test_notebook_executes_headless(notebook, monkeypatch):
    monkeypatch.setenv(RUN_ENV, str(committed_run()))
    monkeypatch.delenv("FA2BENCH_RUN_B", raising=False)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # figures drawn inline
    text = "".join(o.get("text", "") for o in outputs)
    assert str(committed_run()) in text and "regression(s)" in text
