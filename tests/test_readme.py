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


@pytest.mark.slow
def test_readme_guidance_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    guidance_block = next(b for b in blocks if "from scoresde import guidance" in b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(guidance_block, "README.md", "exec"), {})
    values = {line.split(":")[0]: line.rsplit(" ", 1)[1] for line in out.getvalue().splitlines()}
    assert float(values["classifier guidance, share of component 0"]) > 0.99
    assert float(values["classifier-free guidance, share of component 0"]) > 0.99
    assert values["replacement"] == "True"
    # y = -2 observed with noise 0.1 all but selects component 0, whose second coordinate has mean 0
    assert abs(float(values["smc"])) < 0.1
