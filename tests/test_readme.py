"""The README's library example runs as written and gives the mixture's mode weight."""
import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_library_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    shares = [float(line.rsplit(" ", 1)[1]) for line in lines if "share of the right mode" in line]
    assert len(shares) == 5
    for share in shares:  # weight 0.7, 1000 samples: standard error 0.015
        assert abs(share - 0.7) < 0.05
    assert any(line.startswith("bits/dim") for line in lines)
