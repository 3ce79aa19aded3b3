"""The course notebook (examples/course_walkthrough.ipynb) runs top to bottom on a fresh kernel,
with no AWS credentials, and is committed without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "course_walkthrough.ipynb"


def test_the_notebook_is_committed_without_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    # The AWS cells are dry runs unless the reader opts in.
    assert "RUN_ON_AWS = False" in code[0].source


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_without_aws(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("BEEDET_SAGEMAKER_"):
            monkeypatch.delenv(name)
    # No credentials or config files anywhere boto3 looks.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("BEEDET_NOTEBOOK_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("BEEDET_DATA_DIR", str(tmp_path / "data"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Shrunk for the suite, as other tests shrink the config: the training cell's 25 epochs (about
    # 20 s here) to 5, which still validate once and write best.ckpt for the cells after it.
    (train_cell,) = [cell for cell in notebook.cells if '"trainer.max_epochs=25"' in cell.source]
    train_cell.source = train_cell.source.replace('"trainer.max_epochs=25"', '"trainer.max_epochs=5"')
    # A fresh kernel of this interpreter (ipykernel's native python3 spec), started in examples/.
    NotebookClient(notebook, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    nbformat.write(notebook, tmp_path / "executed.ipynb")  # for a look when this fails

    outputs = "\n".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "labelled frames read back with the boxes drawn; 0 problems" in outputs
    assert "drew 60 of 3000 images in 300 groups, one per group" in outputs
    assert '"TensorBoardOutputConfig"' in outputs  # the launch dry run printed its CreateTrainingJob request
    assert "200 counts:" in outputs
    pictures = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
                if {"image/png", "image/jpeg"} & set(o.get("data", {}))]
    assert len(pictures) == 4  # a frame, the PR curves, the count scatter, an overlay
