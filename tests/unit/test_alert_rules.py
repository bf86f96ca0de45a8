"""The alert rules fire when, and with the text, that deploy/prometheus/act-rules.test.yaml says:
`promtool test rules` evaluates them over series shaped as the services export them.

promtool is not a Python package: build it with
`GOBIN=$HOME/.local/bin go install github.com/prometheus/prometheus/cmd/promtool@v0.316.0`
(about 9 minutes and 1 GB of Go modules here) and put it on PATH, or point ACT_PROMTOOL at it.
Skipped without it (CI does not build it; tests/unit/test_dashboard_metrics.py parses every
rule's PromQL there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = os.environ.get("ACT_PROMTOOL") or shutil.which("promtool")
    if not found:
        pytest.skip("promtool is not installed (see this module's docstring)")
    return found


def run_promtool(promtool: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [promtool, *arguments], cwd=RULES, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_rules_are_valid(promtool: str) -> None:
    run_promtool(promtool, "check", "rules", "act-rules.yaml")


def test_the_alerts_fire_as_their_unit_tests_say(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", "act-rules.test.yaml")
    assert "SUCCESS" in result.stdout
