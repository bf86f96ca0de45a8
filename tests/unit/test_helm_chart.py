"""The Helm chart helm/act, rendered and linted offline with Helm's own library
(helm-python-sdk), for every values file of helm/act/ci/.

Every rendered manifest is validated in strict mode: Kubernetes kinds against the Kubernetes
1.33 schemas (kubernetes-validate), the custom resources against the schemas in
tests/data/crd-schemas/ (and the pod templates inside a RayJob against Kubernetes' PodTemplate).
The settings the chart passes (ACT_* variables, flags) are parsed by the services' own settings
classes and CLI; the Kafka topics are compared with act.bus.topics; the dashboard and the rules
are the files of deploy/.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from act.annotator import SERVICE_NAME as ANNOTATOR_SERVICE
from act.bus import ALL_TOPICS, BusSettings, default_topic_specs
from act.cli import app
from act.criticizer import SERVICE_NAME as CRITICIZER_SERVICE
from act.inference.types import LabelSchema
from act.review.server import ReviewSettings
from act.sampler.service import STATE_TOPIC
from act.serving.settings import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ServingSettings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "act"
VALUES_FILES = sorted((CHART / "ci").glob("*.yaml"))
BROKEN_VALUES = REPO / "tests" / "data" / "helm" / "broken-values.yaml"
CRD_SCHEMAS = {
    (schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"]): schema
    for schema in (
        json.loads(path.read_text()) for path in (REPO / "tests/data/crd-schemas").glob("*.json")
    )
}
KUBERNETES = "1.33"
WORKLOADS = ("Deployment", "StatefulSet")

chart = helm.Chart.load(CHART)
cli = typer.main.get_command(app)


def values_of(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    rendered = chart.render(values=values, name="act", namespace="pipeline")
    return [
        document
        for template, text in sorted(rendered.items())
        if template.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [document] = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return document


def pod_specs(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if document["kind"] in WORKLOADS:
        yield document["spec"]["template"]["spec"]
    elif document["kind"] == "RayJob":
        cluster = document["spec"]["rayClusterSpec"]
        yield cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster["workerGroupSpecs"]:
            yield group["template"]["spec"]


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def container(documents: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    [spec] = pod_specs(find(documents, kind, f"act-{component}"))
    [main] = spec["containers"]
    return main


@pytest.fixture(scope="module", params=VALUES_FILES, ids=lambda path: path.stem)
def rendered(request: pytest.FixtureRequest) -> tuple[Path, list[dict[str, Any]]]:
    return request.param, render(values_of(request.param))


# ----------------------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda path: path.stem)
def test_the_chart_lints_clean_in_strict_mode(values_file: Path) -> None:
    report = helm.lint(CHART, values_of(values_file), strict=True, kube_version=f"v{KUBERNETES}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], (problems, report["errors"])


def _validate(document: dict[str, Any]) -> None:
    """Strict validation of one manifest; raises on any error."""
    key = (document["apiVersion"], document["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.Draft7Validator(CRD_SCHEMAS[key]).validate(document)
        for spec_owner in _ray_pod_templates(document):
            kubernetes_validate.validate(spec_owner, KUBERNETES, strict=True)
    else:
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def _ray_pod_templates(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod templates of a RayJob, each as a core/v1 PodTemplate."""
    if document["kind"] != "RayJob":
        return
    cluster = document["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for index, group in enumerate(groups):
        yield {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"ray-group-{index}"},
            "template": group["template"],
        }


def test_every_manifest_is_valid_for_kubernetes_in_strict_mode(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, documents = rendered
    assert documents
    for document in documents:
        try:
            _validate(document)
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(
                f"no schema for {document['kind']} (tests/data/crd-schemas/): {error.message}"
            )


def test_strict_validation_refuses_a_misspelled_field() -> None:
    documents = render(values_of(CHART / "ci" / "everything-enabled-values.yaml"))
    deployment = find(documents, "Deployment", "act-annotator")
    deployment["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)
    for kind in ("RayJob", "KafkaTopic", "ServiceMonitor", "PrometheusRule"):
        [custom] = [d for d in documents if d["kind"] == kind][:1]
        custom["spec"]["unknownField"] = True
        with pytest.raises(jsonschema.ValidationError):
            _validate(custom)
    rayjob = find(documents, "RayJob", "act-trainer")
    rayjob["spec"].pop("unknownField")
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containerz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(rayjob)


def test_values_schema_is_draft_07_and_refuses_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(values_of(CHART / "values.yaml"))
    for component in ("sampler", "reviewQueue", "reviewConsumer", "trainer", "kafka", "images"):
        assert schema["properties"][component]["additionalProperties"] is False, component
    assert schema["definitions"]["modelServer"]["additionalProperties"] is False


def test_the_broken_values_file_is_refused_for_each_of_its_mistakes() -> None:
    broken = values_of(BROKEN_VALUES)
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(broken)
    message = str(refused.value)
    assert "'replica' not allowed" in message
    assert "/annotator/gpu/enabled" in message
    assert "/kafka/topics/partitions" in message
    assert "/sampler/stream" in message
    with pytest.raises(helm.HelmValuesError):  # installing (rendering) refuses it too
        chart.render(values=broken, name="act", namespace="pipeline")
    # The same verdict from an independent draft-07 validator on the values Helm would use.
    schema = json.loads((CHART / "values.schema.json").read_text())
    errors = jsonschema.Draft7Validator(schema).iter_errors(chart.merge_values(broken))
    paths = {"/".join(str(part) for part in error.absolute_path) for error in errors}
    assert {
        "reviewQueue",
        "annotator/gpu/enabled",
        "kafka/topics/partitions",
        "sampler/stream",
    } <= paths


def test_every_ci_values_file_passes_the_schema_and_its_label_schemas_load() -> None:
    for path in VALUES_FILES:
        values = values_of(path)
        chart.validate_schema(values)
        for schema in values.get("labelSchemas", {}).values():
            LabelSchema.model_validate_json(json.dumps(schema))


# ----------------------------------------------------------------------------- workloads


def test_every_command_is_a_real_actctl_command(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, documents = rendered
    commands = [
        c["command"]
        for document in documents
        for spec in pod_specs(document)
        for c in spec["containers"]
        if "command" in c
    ]
    commands += [
        shlex.split(part)
        for document in documents
        if document["kind"] == "RayJob"
        for part in document["spec"]["entrypoint"].split("&&")
    ]
    assert commands
    for command in commands:
        assert command[0] == "actctl", command
        # --help is eager: the command and every flag before it must exist.
        result = CliRunner().invoke(app, [*command[1:], "--help"])
        assert result.exit_code == 0, f"{shlex.join(command)}: {result.output}"


def test_model_services_are_probed_through_grpc_health(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, documents = rendered
    for component, service in (
        ("annotator", ANNOTATOR_SERVICE),
        ("criticizer", CRITICIZER_SERVICE),
    ):
        main = container(documents, "Deployment", component)
        port = int(literal_env(main)["ACT_PORT"])
        assert main["startupProbe"]["grpc"] == {"port": port, "service": service}
        assert main["readinessProbe"]["grpc"] == {"port": port, "service": service}
        assert main["livenessProbe"]["grpc"] == {"port": port}  # the whole server
        assert {p["containerPort"] for p in main["ports"]} == {
            port,
            int(literal_env(main)["ACT_METRICS_PORT"]),
        }
    review = container(documents, "Deployment", "review-queue")
    assert review["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "grpc" in review["livenessProbe"]


def test_default_ports_are_the_services_defaults() -> None:
    documents = render({})
    for component in ("annotator", "criticizer"):
        env = literal_env(container(documents, "Deployment", component))
        assert int(env["ACT_PORT"]) == DEFAULT_PORTS[component]
        assert int(env["ACT_METRICS_PORT"]) == DEFAULT_METRICS_PORTS[component]
    review = literal_env(container(documents, "Deployment", "review-queue"))
    defaults = ReviewSettings()
    assert int(review["ACT_REVIEW_HTTP_PORT"]) == defaults.http_port
    assert int(review["ACT_REVIEW_GRPC_PORT"]) == defaults.grpc_port


def test_the_settings_the_chart_passes_are_accepted_by_the_services(
    rendered: tuple[Path, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every literal ACT_* variable is read by the settings class or CLI option it is meant for,
    and parses there (a typo or a malformed value fails here, not in the cluster)."""
    _, documents = rendered
    for variable in [name for name in os.environ if name.startswith("ACT_")]:
        monkeypatch.delenv(variable)
    kafka = set(BusSettings.model_fields)
    for component in ("annotator", "criticizer"):
        env = literal_env(container(documents, "Deployment", component))
        _read_by(env, ServingSettings, monkeypatch, also=kafka)
    review = literal_env(container(documents, "Deployment", "review-queue"))
    _read_by(review, ReviewSettings, monkeypatch, also=kafka, prefix="ACT_REVIEW_")
    sampler = literal_env(container(documents, "StatefulSet", "sampler"))
    command = cli.commands["serve"].commands["sampler"]
    options = {param.envvar for param in command.params}
    assert {name for name in sampler if name.startswith("ACT_SAMPLER_")} <= options
    with monkeypatch.context() as patched:
        for name, value in sampler.items():
            patched.setenv(name, value)
        params = command.make_context("sampler", []).params  # converts every value by its type
        BusSettings()
    assert params["metrics_port"] == int(sampler["ACT_SAMPLER_METRICS_PORT"])
    consumer = container(documents, "Deployment", "review-consumer")
    consume = cli.commands["serve"].commands["review-consumer"]
    consume.make_context("review-consumer", consumer["command"][3:])


def _read_by(
    env: dict[str, str],
    settings: type,
    monkeypatch: pytest.MonkeyPatch,
    *,
    also: set[str],
    prefix: str = "ACT_",
) -> None:
    fields = set(settings.model_fields)  # type: ignore[attr-defined]
    for name in env:
        if name.startswith("ACT_"):
            key = name.removeprefix(prefix).lower() if name.startswith(prefix) else ""
            assert key in fields or name.removeprefix("ACT_").lower() in also, name
    with monkeypatch.context() as patched:
        for name, value in env.items():
            patched.setenv(name, value)
        settings()
        BusSettings()


def test_pods_run_unprivileged_with_resources(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    _, documents = rendered
    for document in documents:
        for spec in pod_specs(document):
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["automountServiceAccountToken"] is False
            for main in spec["containers"]:
                context = main["securityContext"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"]["drop"] == ["ALL"]
                # Ray writes its session files outside the mounted volumes.
                assert context["readOnlyRootFilesystem"] is (document["kind"] != "RayJob")
                assert {"cpu", "memory"} <= set(main["resources"]["requests"])
                assert "memory" in main["resources"]["limits"]


def test_the_gpu_values_put_vllm_on_gpu_nodes_and_the_cpu_values_request_no_gpu() -> None:
    gpu = render(values_of(CHART / "ci" / "gpu-vllm-values.yaml"))
    for component in ("annotator", "criticizer"):
        deployment = find(gpu, "Deployment", f"act-{component}")
        spec = deployment["spec"]["template"]["spec"]
        [main] = spec["containers"]
        assert main["image"] == chart.values["images"]["gpu"]
        assert literal_env(main)["ACT_BACKEND"] == "vllm"
        options = json.loads(literal_env(main)["ACT_BACKEND_OPTIONS"])
        assert options["model_path"].startswith("/models/")
        assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["model"]["persistentVolumeClaim"]["claimName"] == "act-models"
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    cpu_values = values_of(CHART / "ci" / "cpu-values.yaml")
    cpu_values["trainer"]["enabled"] = True
    cpu = render(cpu_values)
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    assert "--use-gpu" not in find(cpu, "RayJob", "act-trainer")["spec"]["entrypoint"]


def test_the_training_job_exports_featurizes_and_trains_on_the_ray_cluster() -> None:
    documents = render(values_of(CHART / "ci" / "everything-enabled-values.yaml"))
    job = find(documents, "RayJob", "act-trainer")
    export, featurize, train = (shlex.split(step) for step in job["spec"]["entrypoint"].split("&&"))
    assert export[:3] == ["actctl", "export", "/data/act-export.parquet"]
    assert featurize[2:4] == [export[2], "/data/act-table.parquet"]
    assert train[2] == featurize[3]
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    gpus = workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert train[train.index("--num-workers") + 1] == str(workers["replicas"] * gpus)
    assert {"--ray", "--use-gpu"} <= set(train)
    assert train[train.index("--address") + 1] == "auto"  # the job's own Ray cluster
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == chart.values["trainer"]["rayVersion"]


def test_the_sampler_has_a_stable_transactional_id_per_replica() -> None:
    documents = render(values_of(CHART / "ci" / "external-kafka-postgres-values.yaml"))
    sampler = find(documents, "StatefulSet", "act-sampler")
    assert sampler["spec"]["replicas"] == 3
    [main] = sampler["spec"]["template"]["spec"]["containers"]
    [identity] = [e for e in main["env"] if e["name"] == "ACT_SAMPLER_TRANSACTIONAL_ID"]
    assert identity["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    [seed] = [e for e in main["env"] if e["name"] == "ACT_SAMPLER_SEED"]
    assert seed["valueFrom"]["secretKeyRef"] == {"name": "act-sampler-key", "key": "key"}


def test_secrets_come_from_secret_references(rendered: tuple[Path, list[dict[str, Any]]]) -> None:
    _, documents = rendered
    for document in documents:
        for spec in pod_specs(document):
            for main in spec["containers"]:
                for variable in main.get("env", []):
                    if re.search(r"DATABASE_URL|SEED|API_KEY|TOKEN", variable["name"]):
                        assert "secretKeyRef" in variable["valueFrom"], variable["name"]


# ----------------------------------------------------------------------------- Kafka


@pytest.mark.parametrize(("payload", "replication"), [(1024 * 1024, 3), (4 * 1024 * 1024, 2)])
def test_kafka_topics_are_those_ensure_topics_would_create(payload: int, replication: int) -> None:
    values = {
        "kafka": {
            "maxPayloadBytes": payload,
            "topics": {"partitions": 6, "replication": replication, "strimzi": {"enabled": True}},
        }
    }
    topics = {d["spec"]["topicName"]: d for d in render(values) if d["kind"] == "KafkaTopic"}
    assert set(topics) == {*ALL_TOPICS, STATE_TOPIC}
    bus = BusSettings(max_payload_bytes=payload, topic_partitions=6, topic_replication=replication)
    for spec in default_topic_specs(bus):
        rendered = topics[spec.name]
        assert rendered["metadata"]["labels"]["strimzi.io/cluster"] == "act"
        assert rendered["spec"]["partitions"] == spec.partitions
        assert rendered["spec"]["replicas"] == spec.replication
        assert rendered["spec"]["config"] == dict(spec.configs)
    state = topics[STATE_TOPIC]["spec"]
    assert (state["partitions"], state["config"]) == (1, {"cleanup.policy": "compact"})
    sampler = literal_env(container(render(values), "StatefulSet", "sampler"))
    assert int(sampler["ACT_TOPIC_PARTITIONS"]) == 6
    assert int(sampler["ACT_MAX_PAYLOAD_BYTES"]) == payload


# ----------------------------------------------------------------------------- monitoring


def test_the_chart_ships_the_dashboard_and_the_rules_of_deploy() -> None:
    for shipped, source in (
        ("act-dashboard.json", REPO / "deploy" / "grafana" / "act-dashboard.json"),
        ("act-rules.yaml", REPO / "deploy" / "prometheus" / "act-rules.yaml"),
    ):
        assert (CHART / "files" / shipped).read_bytes() == source.read_bytes(), (
            f"helm/act/files/{shipped} differs from {source.relative_to(REPO)}: copy it over"
        )
    documents = render(values_of(CHART / "ci" / "everything-enabled-values.yaml"))
    dashboard = find(documents, "ConfigMap", "act-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["act-dashboard.json"]) == json.loads(
        (REPO / "deploy" / "grafana" / "act-dashboard.json").read_text()
    )
    rule = find(documents, "PrometheusRule", "act")
    assert rule["spec"] == yaml.safe_load(
        (REPO / "deploy" / "prometheus" / "act-rules.yaml").read_text()
    )


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_and_every_panel_an_explanation() -> None:
    operations = (REPO / "docs" / "operations.md").read_text()
    anchors = {
        _github_anchor(line.lstrip("#")) for line in operations.splitlines() if line.startswith("#")
    }
    groups = yaml.safe_load((REPO / "deploy" / "prometheus" / "act-rules.yaml").read_text())
    alerts = [rule for group in groups["groups"] for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 8
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        runbook = alert["annotations"]["runbook_url"]
        assert runbook == f"docs/operations.md#{alert['alert'].lower()}", runbook
        assert runbook.split("#")[1] in anchors, f"no section {alert['alert']} in operations.md"
    dashboard = json.loads((REPO / "deploy" / "grafana" / "act-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["description"], panel["title"]
            assert f"**{panel['title']}**" in operations, (
                f"operations.md explains no {panel['title']!r}"
            )


def test_service_monitors_scrape_a_port_their_service_has() -> None:
    documents = render(values_of(CHART / "ci" / "everything-enabled-values.yaml"))
    services = [d for d in documents if d["kind"] == "Service"]
    monitors = [d for d in documents if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 5
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selector = monitor["spec"]["selector"]["matchLabels"]
        [service] = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"


def test_every_service_has_a_network_policy_and_a_disruption_budget(
    rendered: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, documents = rendered
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    budgets = [d for d in documents if d["kind"] == "PodDisruptionBudget"]
    for workload in (d for d in documents if d["kind"] in WORKLOADS):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        for kind, selecting in (("NetworkPolicy", policies), ("PodDisruptionBudget", budgets)):
            selectors = [
                p["spec"]["podSelector" if kind == "NetworkPolicy" else "selector"]["matchLabels"]
                for p in selecting
            ]
            assert any(s.items() <= labels.items() for s in selectors), (kind, labels)


def test_the_ingress_publishes_the_review_ui_and_api_but_not_the_metrics() -> None:
    documents = render(values_of(CHART / "ci" / "everything-enabled-values.yaml"))
    ingress = find(documents, "Ingress", "act-review-queue")
    [rule] = ingress["spec"]["rules"]
    routed = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    assert routed == {("/", "Exact"), ("/api", "Prefix"), ("/static", "Prefix")}
    assert ingress["spec"]["tls"] == [{"hosts": [rule["host"]], "secretName": "review-act-tls"}]


def test_reviewer_tokens_from_a_secret_are_synced_by_an_init_container() -> None:
    documents = render(values_of(CHART / "ci" / "everything-enabled-values.yaml"))
    spec = find(documents, "Deployment", "act-review-queue")["spec"]["template"]["spec"]
    [main] = spec["containers"]
    [init] = spec["initContainers"]
    assert init["command"] == [
        "actctl",
        "review",
        "sync-reviewers",
        "/var/run/act/reviewers",
        "--deactivate-missing",
    ]
    result = CliRunner().invoke(app, [*init["command"][1:], "--help"])  # the options exist
    assert result.exit_code == 0, result.output
    assert (init["image"], init["securityContext"]) == (main["image"], main["securityContext"])
    [database] = [e for e in main["env"] if e["name"] == "ACT_REVIEW_DATABASE_URL"]
    assert database in init["env"]
    [mount] = [m for m in init["volumeMounts"] if m["mountPath"] == "/var/run/act/reviewers"]
    assert mount["readOnly"] is True
    assert all(m["name"] != mount["name"] for m in main["volumeMounts"])
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "act-reviewer-tokens"
    # By default reviewers without a key are left alone.
    values = {"reviewQueue": {"reviewerTokens": {"existingSecret": "act-reviewer-tokens"}}}
    spec = find(render(values), "Deployment", "act-review-queue")["spec"]["template"]["spec"]
    assert "--deactivate-missing" not in spec["initContainers"][0]["command"]

    without = find(render({}), "Deployment", "act-review-queue")["spec"]["template"]["spec"]
    assert "initContainers" not in without
    assert all("secret" not in volume for volume in without["volumes"])


def test_only_the_sampler_may_call_the_model_services() -> None:
    documents = render({})
    sampler_labels = find(documents, "StatefulSet", "act-sampler")["spec"]["template"]["metadata"][
        "labels"
    ]
    for component in ("annotator", "criticizer"):
        policy = find(documents, "NetworkPolicy", f"act-{component}")
        grpc_rule, metrics_rule = policy["spec"]["ingress"]
        [peer] = grpc_rule["from"]
        assert peer["podSelector"]["matchLabels"].items() <= sampler_labels.items()
        assert grpc_rule["ports"] == [{"port": DEFAULT_PORTS[component], "protocol": "TCP"}]
        assert "namespaceSelector" in metrics_rule["from"][0]
