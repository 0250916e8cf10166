"""The README's ```python examples run as written (```py blocks need files or GPUs a test doesn't have)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


def test_readme_examples_run_in_order(tmp_path, monkeypatch):
    """The streaming example uses the checkpoint the first example makes."""
    monkeypatch.chdir(tmp_path)
    for code in BLOCKS:
        exec(compile(code.replace("/tmp/tiny-deploy", str(tmp_path / "tiny")), str(README), "exec"), {})
