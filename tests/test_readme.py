"""The README's first lines are the two commands, and its Python example runs."""

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_first_lines_are_the_two_commands():
    lines = [ln for ln in README.read_text().splitlines() if ln.strip()][:4]
    assert lines[0].startswith("```")
    assert lines[1].startswith("make demo")
    assert lines[2].startswith("make test")


def test_python_example_runs(tmp_path):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        env: dict = {}
        exec(compile(code, "README.md", "exec"), env)
    finally:
        os.chdir(cwd)
    assert env["logits"].shape == (4, 65, env["cfg"].vocab_size)
    assert (tmp_path / "out" / "ckpt" / "model.safetensors").is_file()
