"""deploy/docker/Dockerfile holds its invariants without Docker: pinned bases, non-root users,
health checks that work against the real services, COPY sources that exist in the build
context, entry points that are real `actctl` commands, and package extras that exist."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from act.cli import app
from act.inference.instant import InstantBackend
from act.review.server import ReviewServer, ReviewSettings
from act.serving.server import ModelServer
from act.serving.settings import DEFAULT_PORTS, ServingSettings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
HEALTHCHECK = REPO / "deploy" / "docker" / "healthcheck.sh"
FINAL_TARGETS = ("cpu", "gpu", "trainer")
# Bases whose digest could not be resolved without registry access, and why (the Dockerfile's
# header says how to pin them).
TAG_ONLY_BASES = {"rayproject/ray": "the 2.60.0 digest was not resolvable offline"}
# Which extras of the package each final image installs.
EXTRAS = {"cpu": {"serve", "embedded"}, "gpu": {"serve"}, "trainer": {"train"}}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY|CREDENTIAL)", re.IGNORECASE)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [args for instruction, args in self.instructions if instruction == keyword]
        return values[-1] if values else None

    def all(self, keyword: str) -> list[str]:
        return [args for instruction, args in self.instructions if instruction == keyword]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages, by name, of a Dockerfile (continuations joined,
    comments dropped, ${ARG} in FROM resolved from the defaults)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            image, _, name = re.sub(r"\s+AS\s+", " AS ", args, flags=re.IGNORECASE).partition(
                " AS "
            )
            for key, value in global_args.items():
                image = image.replace(f"${{{key}}}", value).replace(f"${key}", value)
            current = Stage(name=name.strip(), base=image.strip())
            stages[current.name] = current
        elif current is None:
            assert instruction == "ARG", f"only ARG may come before the first FROM: {line}"
            key, _, value = args.partition("=")
            global_args[key.strip()] = value.strip()
        else:
            current.instructions.append((instruction, args.strip()))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE)


def external_bases() -> dict[str, str]:
    return {name: stage.base for name, stage in STAGES.items() if stage.base not in STAGES}


def test_every_external_base_is_pinned_to_a_version_and_a_digest() -> None:
    assert set(external_bases()) >= set(FINAL_TARGETS)
    for stage, base in external_bases().items():
        reference, _, digest = base.partition("@")
        repository, _, tag = reference.rpartition(":")
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{stage}: {base} is not pinned to a version"
        assert "latest" not in tag, base
        if repository in TAG_ONLY_BASES:
            assert not digest, f"{repository} has a digest now: drop it from TAG_ONLY_BASES"
        else:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{stage}: {base} has no digest"


def test_the_gpu_image_is_vllms_official_one_at_a_release_with_structured_outputs() -> None:
    repository, _, tag = STAGES["gpu"].base.partition("@")[0].rpartition(":")
    assert repository == "vllm/vllm-openai"
    major, minor = (int(part) for part in re.match(r"v(\d+)\.(\d+)", tag).groups())
    assert (major, minor) >= (0, 12), tag  # the structured_outputs API the vllm backend uses


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_trainer_image_has_the_ray_of_the_train_extra_and_of_the_chart() -> None:
    repository, _, tag = STAGES["trainer"].base.rpartition(":")
    assert repository == "rayproject/ray"
    version, python, variant = tag.split("-")
    assert python == "py311" and variant in ("cpu", "gpu")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    [ray_pin] = [d for d in pyproject["project"]["optional-dependencies"]["train"] if "ray" in d]
    low, high = re.search(r">=([\d.]+),<([\d.]+)", ray_pin).groups()
    assert _version(low) <= _version(version) < _version(high), (version, ray_pin)
    chart = yaml.safe_load((REPO / "helm" / "act" / "values.yaml").read_text())
    assert chart["trainer"]["rayVersion"] == version


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_images_run_as_a_numeric_non_root_user(target: str) -> None:
    user = STAGES[target].last("USER")
    assert user is not None, f"{target} sets no USER"
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{target} runs as {user!r}"


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_images_install_existing_extras_of_this_package(target: str) -> None:
    extras = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    # The image's own RUNs and those of the stage that builds its environment, if any.
    builders = [STAGES[name] for name in (target, f"{target}-venv") if name in STAGES]
    installed: set[str] = set()
    for command in (run for stage in builders for run in stage.all("RUN")):
        for match in re.finditer(r'"\$1\[([a-z,]+)\]"', command):
            installed |= set(match.group(1).split(","))
    assert installed == EXTRAS[target]
    assert installed <= extras


def _dockerignore_allows(relative: str) -> bool:
    """Whether the build context keeps `relative` (.dockerignore: last matching rule wins)."""
    keep = True
    for rule in (REPO / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes) or fnmatch.fnmatch(
            relative, pattern
        ):
            keep = negate
    return keep


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    sources = []
    for stage in STAGES.values():
        for args in stage.all("COPY"):
            words = [word for word in shlex.split(args) if not word.startswith("--")]
            if "--from=" in args:
                assert args.split("--from=")[1].split()[0] in STAGES
                continue
            sources += words[:-1]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path"
        assert _dockerignore_allows(source), f"COPY {source}: excluded by .dockerignore"
    # What the context must not carry.
    for local_state in (".venv", ".git", "tests", "deploy/local"):
        assert not _dockerignore_allows(local_state), local_state


def test_no_secret_is_baked_into_an_image() -> None:
    for stage in STAGES.values():
        for args in stage.all("ENV") + stage.all("ARG"):
            assert not SECRET_NAME.search(args), f"{stage.name}: {args}"


@pytest.mark.parametrize("target", ("cpu", "gpu"))
def test_entry_points_are_real_actctl_commands(target: str) -> None:
    entrypoint = yaml.safe_load(STAGES[target].last("ENTRYPOINT"))  # JSON exec form
    command = yaml.safe_load(STAGES[target].last("CMD"))
    assert entrypoint == ["actctl"]
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output


def _healthcheck(target: str) -> int:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([HEALTHCHECK, target], env=env, capture_output=True).returncode


def _default_health_target(target: str) -> str:
    [value] = [
        word.split("=", 1)[1]
        for args in STAGES[target].all("ENV")
        for word in shlex.split(args)
        if word.startswith("ACT_HEALTHCHECK=")
    ]
    return value


def test_every_image_health_checks_with_the_script() -> None:
    for target in ("cpu", "gpu"):
        assert "act-healthcheck" in STAGES[target].last("HEALTHCHECK")
    # The Ray image is probed by KubeRay; the Dockerfile says so explicitly.
    assert STAGES["trainer"].last("HEALTHCHECK") == "NONE"


def test_default_health_targets_are_the_services_real_endpoints() -> None:
    # The review server's port and route (served live in the test below), the annotator's port.
    review = _default_health_target("cpu")
    assert review == f"http://127.0.0.1:{ReviewSettings().http_port}/healthz"
    assert _default_health_target("gpu") == f"grpc://127.0.0.1:{DEFAULT_PORTS['annotator']}"


@pytest.mark.slow
def test_the_health_check_passes_on_serving_services_and_fails_otherwise(tmp_path: Path) -> None:
    async def grpc_server_health() -> tuple[int, int]:
        server = ModelServer(
            "criticizer",
            InstantBackend(),
            ServingSettings(host="127.0.0.1", port=0, metrics_port=0),
        )
        await server.start()
        try:
            serving = await asyncio.to_thread(_healthcheck, f"grpc://{server.address}")
            metrics = await asyncio.to_thread(_healthcheck, server.metrics_url or "")
        finally:
            await server.stop(grace=0)
        return serving, metrics

    assert asyncio.run(grpc_server_health()) == (0, 0)
    with ReviewServer(f"sqlite:///{tmp_path / 'review.db'}", 0, 0, host="127.0.0.1") as review:
        assert _healthcheck(f"{review.http_url}/healthz") == 0
        assert _healthcheck(f"grpc://{review.grpc_target}") == 0
        assert _healthcheck(f"{review.http_url}/no-such-page") == 1
        closed = review.grpc_target
    assert _healthcheck(f"grpc://{closed}") == 1  # stopped: refused
    assert _healthcheck("tcp://127.0.0.1:1") == 2
