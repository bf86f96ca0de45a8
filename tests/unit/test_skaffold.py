"""skaffold.yaml builds images that exist in deploy/docker/Dockerfile and deploys them through the
chart at helm/act, with a `cpu` profile (no GPU anywhere) and a `gpu` profile (vLLM).

Skaffold itself is not installed here: the file is validated against the part of skaffold's own
v4beta13 JSON schema it uses (tests/data/skaffold-v4beta13.schema.json), and each profile's
patches are applied (RFC 6902 add/replace, as skaffold does) to check what it builds and deploys.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "skaffold.yaml").read_text())
SCHEMA = json.loads((REPO / "tests" / "data" / "skaffold-v4beta13.schema.json").read_text())
PROFILES = ("cpu", "gpu")


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """`config` with JSON patches applied (the ops skaffold.yaml uses: add and replace)."""
    patched = copy.deepcopy(config)
    for patch in patches:
        *parents, last = [
            part.replace("~1", "/").replace("~0", "~") for part in patch["path"].split("/")[1:]
        ]
        target: Any = patched
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if patch["op"] == "add" and isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), patch["value"])
        elif patch["op"] in ("add", "replace"):
            if patch["op"] == "replace":
                assert last in target, f"replace of a missing {patch['path']}"
            target[int(last) if isinstance(target, list) else last] = patch["value"]
        else:
            raise AssertionError(f"op {patch['op']} is not used here")
    return patched


def effective(profile: str | None) -> dict[str, Any]:
    if profile is None:
        return CONFIG
    [spec] = [p for p in CONFIG["profiles"] if p["name"] == profile]
    return apply_patches(CONFIG, spec.get("patches", []))


def dockerfile_targets_and_args(path: Path) -> tuple[set[str], set[str]]:
    text = path.read_text()
    targets = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE))
    args = set(re.findall(r"^ARG\s+([A-Za-z_][A-Za-z0-9_]*)", text, flags=re.MULTILINE))
    return targets, args


def template_image_name(image: str) -> str:
    """The suffix skaffold gives an artifact's template variables (`/`, `-`, `.` -> `_`)."""
    return re.sub(r"[/\-.]", "_", image)


def test_skaffold_yaml_is_valid_for_its_schema_version() -> None:
    assert CONFIG["apiVersion"] in ("skaffold/v4beta13", "skaffold/v4beta11")
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(CONFIG)
    assert {p["name"] for p in CONFIG["profiles"]} == set(PROFILES)
    for profile in PROFILES:
        jsonschema.Draft7Validator(SCHEMA).validate(effective(profile))


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_artifacts_are_built_from_the_dockerfile_targets(profile: str | None) -> None:
    config = effective(profile)
    artifacts = config["build"]["artifacts"]
    assert len({a["image"] for a in artifacts}) == len(artifacts)
    for artifact in artifacts:
        context = REPO / artifact.get("context", ".")
        dockerfile = context / artifact["docker"]["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        targets, args = dockerfile_targets_and_args(dockerfile)
        assert artifact["docker"]["target"] in targets
        assert set(artifact["docker"].get("buildArgs", {})) <= args


@pytest.mark.parametrize("profile", [None, *PROFILES])
def test_the_chart_is_deployed_with_every_built_image(profile: str | None) -> None:
    config = effective(profile)
    [release] = config["deploy"]["helm"]["releases"]
    assert release["chartPath"] == "helm/act"
    assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
    for values_file in release["valuesFiles"]:
        assert (REPO / values_file).is_file(), values_file
    defaults = yaml.safe_load((REPO / "helm" / "act" / "values.yaml").read_text())
    built = {template_image_name(a["image"]) for a in config["build"]["artifacts"]}
    used = set()
    for key, template in release["setValueTemplates"].items():
        section, _, name = key.partition(".")
        assert name in defaults[section], f"{key} is not a chart value"
        [image] = re.findall(r"^\{\{\.IMAGE_FULLY_QUALIFIED_(\w+)\}\}$", template)
        assert image in built, f"{key} uses {image}, which this configuration does not build"
        used.add(image)
    assert used == built, f"built but never deployed: {built - used}"


def render_profile(profile: str) -> list[dict[str, Any]]:
    """The chart as the profile deploys it, with stand-ins for the images skaffold built."""
    [release] = effective(profile)["deploy"]["helm"]["releases"]
    values: dict[str, Any] = {}
    for values_file in release["valuesFiles"]:
        values = _merge(values, yaml.safe_load((REPO / values_file).read_text()) or {})
    for key in release["setValueTemplates"]:
        section, _, name = key.partition(".")
        values.setdefault(section, {})[name] = f"registry.test/{name}:built"
    rendered = helm.Chart.load(REPO / release["chartPath"]).render(values=values, name="act")
    return [
        document
        for template, text in rendered.items()
        if template.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        both_maps = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both_maps else value
    return merged


def _model_server(documents: list[dict[str, Any]], component: str) -> dict[str, Any]:
    [deployment] = [
        d
        for d in documents
        if d["kind"] == "Deployment" and d["metadata"]["name"] == f"act-{component}"
    ]
    [main] = deployment["spec"]["template"]["spec"]["containers"]
    return main


def test_the_cpu_profile_runs_embedded_models_and_requests_no_gpu() -> None:
    documents = render_profile("cpu")
    assert "nvidia.com/gpu" not in json.dumps(documents)
    for component in ("annotator", "criticizer"):
        main = _model_server(documents, component)
        assert main["image"] == "registry.test/cpu:built"
        backend = {e["name"]: e.get("value") for e in main["env"]}["ACT_BACKEND"]
        assert backend == "embedded"


def test_the_gpu_profile_runs_vllm_on_gpus_from_the_gpu_image() -> None:
    documents = render_profile("gpu")
    for component in ("annotator", "criticizer"):
        main = _model_server(documents, component)
        assert main["image"] == "registry.test/gpu:built"
        assert {e["name"]: e.get("value") for e in main["env"]}["ACT_BACKEND"] == "vllm"
        assert main["resources"]["limits"]["nvidia.com/gpu"] >= 1
