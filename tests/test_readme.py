"""Every Python code block of the README runs as written.

The blocks run in order in one namespace, as a reader pasting them into one
session would (later blocks use names the API tour defined), in a scratch
directory (the tour saves a model file).  Shell blocks are the set-up and
development commands that .ci/run itself executes; ``text`` blocks are not
code.  A block that opens with ``# not run`` needs what a test cannot have (a
cluster's scheduler at a real address) and is only compiled.  The test skips
without the optional packages the blocks use (PyTorch, Dask).
"""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text(encoding="utf-8")) if lang == language]


def test_the_readme_has_python_blocks_and_every_block_is_labelled():
    text = README.read_text(encoding="utf-8")
    assert _blocks("python"), "no ```python block found"
    unlabelled = [m.start() for m in FENCE.finditer(text) if not m.group(1)]
    assert not unlabelled, "every code block names its language (python, bash or text)"


def test_python_blocks_run_as_written(tmp_path, monkeypatch):
    pytest.importorskip("torch")  # the API tour uses PyTorch layers as import sources
    pytest.importorskip("dask.array")  # the corpus-mining section runs a LocalCluster
    pytest.importorskip("distributed")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(_blocks("python")):
        code = compile(block, f"README.md python block {i + 1}", "exec")
        if not block.startswith("# not run"):
            exec(code, namespace)  # noqa: S102 - the README's own examples
    assert (tmp_path / "model.npz").exists()
