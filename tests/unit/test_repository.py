"""The repository's promises: README's commands are the ones CI runs, and its example works."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]


def _fenced_blocks(language: str) -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", readme, flags=re.DOTALL)


def test_readme_starts_with_the_one_command_demo() -> None:
    install, demo = _fenced_blocks("bash")[0].strip().splitlines()
    assert 'pip install -e ".[demo]"' in install
    assert demo.strip() == "actctl demo"


def test_readme_gives_install_and_test_in_two_commands_and_ci_runs_the_test_one() -> None:
    install, test = _fenced_blocks("bash")[1].strip().splitlines()
    assert "pip install" in install
    assert test.startswith("python -m pytest")
    ci_commands = [
        line.strip()
        for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert test in ci_commands, "README's test command must be the one .ci/run runs"


def test_readme_python_example_runs_and_selects_exactly_the_budget() -> None:
    namespace: dict[str, object] = {}
    exec(_fenced_blocks("python")[0], namespace)
    pi = np.asarray(namespace["pi"])
    assert abs(pi.sum() - 2.0) < 1e-9
    assert int(np.asarray(namespace["delta"]).sum()) == 2
