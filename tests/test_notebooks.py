"""The Colab notebooks (`notebooks/*.ipynb`): they hold no library code, pass the linter,
and run top to bottom at smoke scale in a fresh kernel.

The kernel gets one CPU device (a notebook user's view, not the suite's 8 fake devices)
and its parameters from ``DREAMR_NB_*`` environment variables, in a temporary workdir.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("quickstart", "hf_checkpoint")
# A definition longer than this is library code: it belongs in dreamr_jax.
MAX_DEF_LINES = 4
# Per cell; the quickstart's smoke training is one cell of about 2 minutes on a free CPU.
CELL_TIMEOUT_S = 1200
KERNEL = "dreamr-notebook-test"


def _notebook(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_valid_with_a_parameters_cell_first(name):
    nb = _notebook(name)
    nbformat.validate(nb)
    first = _code_cells(nb)[0]
    assert "parameters" in first.metadata.get("tags", []), f"{name}: first code cell untagged"
    assert re.search(r'os\.environ\.get\("DREAMR_NB_WORKDIR"', first.source), first.source
    # Committed without outputs: what runs is what is reviewed.
    assert all(not c.outputs and c.execution_count is None for c in _code_cells(nb)), name


@pytest.mark.parametrize("name", NAMES)
def test_notebook_defines_no_library_code(name):
    for i, cell in enumerate(_code_cells(_notebook(name))):
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= MAX_DEF_LINES, (
                    f"{name}.ipynb code cell {i} defines {node.name} ({lines} lines): "
                    "move it into dreamr_jax and call it from the notebook."
                )


def test_notebooks_pass_ruff():
    # pyproject excludes notebooks/ from `ruff check .`; explicit paths are still linted.
    files = [str(NOTEBOOKS / f"{name}.ipynb") for name in NAMES]
    for args in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *args, *files], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


def _execute(name: str, tmp_path: Path, monkeypatch, **params: str):
    """Runs the notebook in a fresh kernel of this interpreter from ``notebooks/`` (as
    Jupyter does); returns it with its outputs."""
    # A kernelspec of our own: a "python3" spec elsewhere on the machine may be another
    # interpreter.
    write_kernel_spec(tmp_path / "jupyter" / "kernels" / KERNEL)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DREAMR_NB_")}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["DREAMR_NB_WORKDIR"] = str(tmp_path / "workdir")
    env.update({f"DREAMR_NB_{k.upper()}": v for k, v in params.items()})
    nb = _notebook(name)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute(env=env)  # raises CellExecutionError naming the cell on an error
    for i, cell in enumerate(_code_cells(nb)):
        assert cell.execution_count is not None, f"{name} code cell {i} did not run"
        assert not [o for o in cell.outputs if o.output_type == "error"], f"cell {i}"
    return nb


def _text(nb) -> str:
    """Everything the notebook printed or displayed as text or Markdown."""
    parts = []
    for cell in _code_cells(nb):
        for out in cell.outputs:
            if out.output_type == "stream":
                parts.append(out.text)
            else:
                data = out.get("data", {})
                parts += [data.get("text/markdown", ""), data.get("text/plain", "")]
    return "\n".join(parts)


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in _code_cells(nb) for o in c.outputs)


@pytest.mark.slow
def test_quickstart_runs_the_smoke_pipeline(tmp_path, monkeypatch):
    nb = _execute("quickstart", tmp_path, monkeypatch, config="configs/demo.py:smoke")
    text = _text(nb)
    workdir = tmp_path / "workdir"
    assert "install skipped" in text
    assert "# DREAM-R demo report" in text and "## Engines with the draft sapo" in text
    steps = re.findall(r"^\[(draft ok|target[a-z ]*)(?: p=\d\.\d\d)?\] ", text, re.M)
    assert steps, text[-3000:]
    assert (workdir / "report.json").is_file() and (workdir / "infer/generation.json").is_file()
    # The eval's PNGs of the SAPO draft (3) and the notebook's own figure.
    assert _images(nb) >= 4


@pytest.mark.slow
def test_hf_checkpoint_falls_back_to_a_tiny_checkpoint(tmp_path, monkeypatch):
    missing = tmp_path / "no_such_checkpoint"
    nb = _execute("hf_checkpoint", tmp_path, monkeypatch, checkpoint=str(missing))
    text = _text(nb)
    workdir = tmp_path / "workdir"
    assert f"{missing} does not exist: using a TINY RANDOM-WEIGHT checkpoint" in text
    assert "--config.target.checkpoint=" in text
    assert re.search(r"^\[target[a-z ]*\] ", text, re.M), text[-3000:]
    assert "max |logits(export) - logits(original)| = 0.0" in text
    for f in ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"):
        assert (workdir / "export" / f).is_file(), f
    assert (workdir / "infer/generation.json").is_file()
