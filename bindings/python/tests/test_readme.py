"""The README's Python examples run as written (outputs redirected to a temporary directory)."""

import os
import re

from conftest import ROOT


def readme_python_blocks():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Python", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_examples_run(tmp_path, model_dir):
    blocks = readme_python_blocks()
    assert len(blocks) == 2, "one training and one inference example"
    cwd = os.getcwd()
    os.chdir(ROOT)  # the examples' paths are relative to the repository
    try:
        scope = {}
        for code in blocks:
            exec(compile(code.replace('"runs/', f'"{tmp_path}/'), "README.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    assert 0.0 <= scope["metrics"]["dev"]["f1"] <= 1.0
    assert scope["vectors"].shape == (2, 384)
    assert all(set(e) == {"entity_group", "score", "word", "start", "end"}
               for e in scope["entities"])
