"""The README's ```python examples run as written, in order, from the package folder (outputs go to tmp)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    assert len(BLOCKS) >= 3
    monkeypatch.chdir(README.parent)  # the examples use configs/ paths relative to the package folder
    for i, code in enumerate(BLOCKS):
        code = code.replace("/tmp/shusheng-tuner", str(tmp_path))
        exec(compile(code, f"{README}:block{i}", "exec"), {})
    out = capsys.readouterr().out
    assert "held-out loss" in out and "5 in, 5 packed into" in out
