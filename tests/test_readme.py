"""The README's Python API example runs as written (on a tiny run standing in for runs/demo)."""

from __future__ import annotations

import re

from tests.conftest import PROJECT_ROOT
from tests.serving.conftest import tiny_run  # noqa: F401  (shared session fixture)


def test_the_python_api_example_runs(tiny_run, tmp_path, monkeypatch, capsys):  # noqa: F811
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index("### Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"# (medlens data synth [^\n(]+)", code).group(1).split()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(tiny_run)
    from medlens.cli.main import main

    assert main([*command[1:], "--size", "32"]) == 0
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(".png" in line for line in lines[:3])
    assert lines[3].startswith("multiclass ['normal', 'nodule', 'opacity']")
