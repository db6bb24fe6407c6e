"""deploy/: every manifest parses; the built-in kinds pass Kubernetes' own schemas (kubernetes-validate,
offline, strict: no unknown field); the CRD kinds (InferencePool, HTTPRoute, ScaledObject) have the
fields these manifests rely on; and the pieces agree with each other and with the code: the picker's
flags go through the real CLI, the ports and names line up, the probes ask what the picker serves,
the autoscaler's metric is one the picker exports, and the vLLM flags are the engine plugin's own."""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from aladdin.cli import cli
from aladdin.errors import AladdinError
from aladdin.plugin.router.metrics import Counter, Gauge, Histogram, RouterMetrics
from aladdin.plugin.vllm.config import ADDITIONAL_CONFIG_KEY, load_config
from aladdin.plugin.vllm.launch import PLUGIN_ENVIRONMENT, plugin_flags

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
GATEWAY_API = DEPLOY / "gateway-api"
# the Kubernetes versions the built-in kinds are checked against: an old one still supported by
# the gateways' InferencePool releases, and the newest schema kubernetes-validate ships
K8S_VERSIONS = ("1.30.0", "latest")
CRD_KINDS = {
    ("inference.networking.k8s.io/v1", "InferencePool"),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}
# Gateway API's Duration: up to four number+unit parts, e.g. "900s", "1h30m"
GATEWAY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
WORKERS_STAND_IN = "--worker 10.0.0.7:8000 --worker 10.0.0.8:8000"


# ---------------------------------------------------------------------- reading the manifests


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path, doc))
    return out


DOCUMENTS = _documents()


def _ids(items: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    return [f"{p.relative_to(DEPLOY)}:{d.get('kind')}/{(d.get('metadata') or {}).get('name', '')}" for p, d in items]


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in DOCUMENTS if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} under deploy/, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _script(container: dict[str, Any]) -> str:
    return " ".join([*container.get("command", []), *container.get("args", [])])


def _picker_deployment() -> dict[str, Any]:
    found = [d for _, d in DOCUMENTS if d.get("kind") == "Deployment" and "aladdin picker" in _script(_container(d))]
    assert len(found) == 1, "expected one Deployment that runs `aladdin picker`"
    return found[0]


def _vllm_deployment() -> dict[str, Any]:
    found = [d for _, d in DOCUMENTS if d.get("kind") == "Deployment" and "vllm" in _script(_container(d))
             and "aladdin picker" not in _script(_container(d))]
    assert len(found) == 1, "expected one vLLM Deployment"
    return found[0]


def _picker_args() -> list[str]:
    """The words after `aladdin picker` in the container's script, with the worker list the
    script builds at start-up stood in by two addresses."""
    script = _script(_container(_picker_deployment()))
    tail = script.split("aladdin picker", 1)[1].replace("\\\n", " ").split("\n", 1)[0]
    tail = tail.replace('"$WORKERS"', WORKERS_STAND_IN).replace("$WORKERS", WORKERS_STAND_IN)
    return shlex.split(tail)


def _flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} is not given"
    return args[args.index(name) + 1]


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """A port by number or by name, as the container declares it."""
    for declared in container.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return declared["containerPort"]
    raise AssertionError(f"the container declares no port {port!r}")


def _service_port(service: dict[str, Any], name: str) -> dict[str, Any]:
    ports = [p for p in service["spec"]["ports"] if p.get("name") == name]
    assert len(ports) == 1, f"Service {service['metadata']['name']} has no port named {name}"
    return ports[0]


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


# ---------------------------------------------------------------------- every document


def test_deploy_has_the_gateway_api_manifests():
    kinds = {d["kind"] for _, d in DOCUMENTS}
    assert {"Deployment", "Service", "InferencePool", "HTTPRoute", "ScaledObject"} <= kinds
    assert all(p.is_relative_to(DEPLOY) for p, _ in DOCUMENTS)


@pytest.mark.parametrize(("path", "doc"), DOCUMENTS, ids=_ids(DOCUMENTS))
def test_every_document_is_a_named_resource(path, doc):
    assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    assert isinstance(doc.get("apiVersion"), str) and isinstance(doc.get("kind"), str)
    if doc["kind"] != "Kustomization":
        name = (doc.get("metadata") or {}).get("name")
        assert isinstance(name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        assert "namespace" not in doc["metadata"], "the namespace is the user's choice (kubectl -n)"


BUILTIN = [(p, d) for p, d in DOCUMENTS if (d["apiVersion"], d["kind"]) not in CRD_KINDS]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("path", "doc"), BUILTIN, ids=_ids(BUILTIN))
def test_builtin_kinds_pass_kubernetes_schemas(path, doc, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    if version == "latest":
        version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']} is not valid for Kubernetes {version}: "
                    f"{exc.message} at {'/'.join(str(p) for p in exc.path)}")


def test_crd_kinds_are_only_the_known_ones():
    crds = {(d["apiVersion"], d["kind"]) for _, d in DOCUMENTS} - {(d["apiVersion"], d["kind"]) for _, d in BUILTIN}
    assert crds <= CRD_KINDS


def test_kustomization_lists_existing_manifests():
    kustomization = _one("Kustomization")
    listed = kustomization["resources"]
    assert listed and all((GATEWAY_API / name).is_file() for name in listed)
    # everything in the folder but the KEDA example (it needs KEDA's CRD) is applied with -k
    here = {p.name for p in GATEWAY_API.glob("*.yaml")} - {"kustomization.yaml", "keda.yaml"}
    assert set(listed) == here


# ---------------------------------------------------------------------- the CRD kinds, structurally


def test_inference_pool_fields():
    pool = _one("InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    spec = pool["spec"]
    assert set(spec) <= {"selector", "targetPorts", "appProtocol", "endpointPickerRef"}
    labels = spec["selector"]["matchLabels"]
    assert set(spec["selector"]) == {"matchLabels"} and labels and all(isinstance(v, str) for v in labels.values())
    ports = spec["targetPorts"]
    assert 1 <= len(ports) <= 8 and len({p["number"] for p in ports}) == len(ports)
    assert all(set(p) == {"number"} and isinstance(p["number"], int) and 0 < p["number"] < 65536 for p in ports)
    ref = spec["endpointPickerRef"]
    assert set(ref) <= {"group", "kind", "name", "port", "failureMode"}
    assert ref.get("group", "") == "" and ref.get("kind", "Service") == "Service"
    assert isinstance(ref["name"], str) and isinstance(ref["port"]["number"], int)  # port: required for a Service
    assert ref.get("failureMode", "FailClose") in ("FailOpen", "FailClose")


def test_http_route_fields():
    route = _one("HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = route["spec"]
    assert spec["parentRefs"] and all(isinstance(ref["name"], str) for ref in spec["parentRefs"])
    assert spec["rules"]
    for rule in spec["rules"]:
        assert set(rule) <= {"name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"}
        for match in rule.get("matches", []):
            assert match["path"]["type"] in ("Exact", "PathPrefix", "RegularExpression")
            assert match["path"]["value"].startswith("/")
        for ref in rule["backendRefs"]:
            assert ref["group"] == "inference.networking.k8s.io" and ref["kind"] == "InferencePool"
            assert isinstance(ref["name"], str)
        for value in (rule.get("timeouts") or {}).values():
            assert GATEWAY_DURATION.match(value), value


def test_scaled_object_fields():
    scaled = _one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert isinstance(spec["scaleTargetRef"]["name"], str)
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:  # the HPA's own field: the built-in schema can check it
        hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                        "maxReplicas": 2, "behavior": behavior}}
        kubernetes_validate = pytest.importorskip("kubernetes_validate")
        kubernetes_validate.validate(hpa, K8S_VERSIONS[0], strict=True)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert meta["serverAddress"].startswith(("http://", "https://"))
    assert isinstance(meta["query"], str) and isinstance(meta["threshold"], str)  # KEDA takes strings here
    float(meta["threshold"])


# ---------------------------------------------------------------------- the picker


def _picker_module() -> Any:
    """aladdin.plugin.router.picker, or a skip where its extra (grpcio, xds-protos) is missing."""
    try:
        from aladdin.plugin.router import picker
    except (ImportError, AladdinError) as exc:
        pytest.skip(f"the picker extra is not installed: {exc}")
    return picker


def _picker_help() -> set[str]:
    result = CliRunner().invoke(cli, ["picker", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", result.output))


def test_picker_flags_exist():
    known = _picker_help()
    used = {word for word in _picker_args() if word.startswith("--")}
    assert used - known == set(), f"flags that aladdin picker does not have: {sorted(used - known)}"


@pytest.fixture
def picker_config(tmp_path, monkeypatch):
    """The PickerConfig that `aladdin picker` builds from the manifest's flags (its real CLI,
    stopped before serving), with the pod's files stood in by local ones."""
    picker = _picker_module()
    args = _picker_args()
    mounts = {m["name"]: m["mountPath"] for m in _container(_picker_deployment())["volumeMounts"]}
    stand_ins = {"--tls-cert": tmp_path / "tls.crt", "--tls-key": tmp_path / "tls.key",
                 "--tokenizer": tmp_path / "model", "--profile": ROOT / "profiles" / "h200-llama2-7b.json"}
    for flag, local in stand_ins.items():
        if flag in args:
            i = args.index(flag) + 1
            assert any(args[i].startswith(path + "/") for path in mounts.values()), f"{flag} {args[i]} is on no volume"
            if flag == "--tokenizer":
                local.mkdir()
            elif not local.exists():
                local.write_text("stand-in\n")
            args[i] = str(local)
    captured = {}
    monkeypatch.setattr(picker, "run", lambda config, tokenizer_dir=None: captured.update(
        config=config, tokenizer_dir=tokenizer_dir))
    result = CliRunner().invoke(cli, ["picker", *args])
    assert result.exit_code == 0, result.output
    return captured["config"]


def test_picker_flags_make_a_valid_config(picker_config):
    config = picker_config
    assert config.grpc_host == "0.0.0.0" and config.placement.host == "0.0.0.0"  # reachable in the pod network
    assert config.tls_cert and config.tls_key  # gateways connect to the picker with TLS
    assert config.placement.workers == tuple(f"http://{w}" for w in WORKERS_STAND_IN.split()[1::2])
    assert config.placement.profile  # the TTFT and ATGT filters need the time models


def test_picker_ports_match_its_service_and_the_pool(picker_config):
    deployment, container = _picker_deployment(), _container(_picker_deployment())
    service = _one("Service", _one("InferencePool")["spec"]["endpointPickerRef"]["name"])
    assert _selects(service["spec"]["selector"], _pod_labels(deployment))
    grpc, metrics = _service_port(service, "grpc"), _service_port(service, "metrics")
    assert _container_port(container, grpc["targetPort"]) == picker_config.grpc_port
    assert _container_port(container, metrics["targetPort"]) == picker_config.placement.port
    assert grpc["port"] == _one("InferencePool")["spec"]["endpointPickerRef"]["port"]["number"]


def test_picker_restarts_lose_nothing_the_gateway_can_avoid(picker_config):
    deployment = _picker_deployment()
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate" and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > picker_config.drain_s + picker_config.grace_s
    budget = _one("PodDisruptionBudget")
    assert _selects(budget["spec"]["selector"]["matchLabels"], _pod_labels(deployment))
    assert budget["spec"]["minAvailable"] >= 1
    assert _one("InferencePool")["spec"]["endpointPickerRef"].get("failureMode", "FailClose") == "FailClose"


def test_picker_probes_ask_what_it_serves(picker_config):
    picker = _picker_module()
    http_paths = set(re.findall(r'add_get\("([^"]+)"', inspect.getsource(picker.PickerServer.start)))
    assert {"/health", "/metrics"} <= http_paths
    container = _container(_picker_deployment())
    probes = {name: container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe") if name in container}
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    for name, probe in probes.items():
        if "grpc" in probe:
            assert probe["grpc"].get("service", "") in picker.HEALTH_SERVICES, name
            assert probe["grpc"]["port"] == picker_config.grpc_port, name
            # the kubelet's grpc probe is plaintext unless told TLS (Kubernetes 1.37, alpha)
            assert picker_config.tls_cert is None or probe["grpc"].get("mode") == "TLS", \
                f"{name}: a plaintext grpc probe cannot reach the picker's TLS port"
        else:
            assert "httpGet" in probe, f"{name}: the picker answers grpc or HTTP probes"
            assert probe["httpGet"]["path"] in http_paths, name
            assert _container_port(container, probe["httpGet"]["port"]) == picker_config.placement.port, name
    assert probes["readinessProbe"].get("httpGet", {}).get("path", "/health") == "/health"  # up while a worker is


def test_picker_is_scraped_on_its_metrics_port(picker_config):
    annotations = _picker_deployment()["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true"
    assert int(annotations["prometheus.io/port"]) == picker_config.placement.port
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


def test_picker_script_runs_the_picker_on_the_pods_it_resolves(tmp_path):
    """The container's script, run here with `aladdin` stood in by a stub that prints its
    arguments and the headless Service's name by localhost."""
    script = _container(_picker_deployment())["args"][-1]
    stub = tmp_path / "aladdin"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
           "WORKER_SERVICE": "localhost", "WORKER_PORT": "8000"}
    done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    args = lines[lines.index("picker") + 1:]
    workers = [args[i + 1] for i, word in enumerate(args) if word == "--worker"]
    assert workers and set(workers) <= {"127.0.0.1:8000", "[::1]:8000"}  # IP:PORT, as the gateway names pods
    rest = [word for i, word in enumerate(args) if word != "--worker" and (i == 0 or args[i - 1] != "--worker")]
    expected = _picker_args()
    assert rest == [w for i, w in enumerate(expected) if w != "--worker" and (i == 0 or expected[i - 1] != "--worker")]


def test_picker_worker_list_is_the_pools_pods():
    container, vllm = _container(_picker_deployment()), _vllm_deployment()
    env = _env(container)
    headless = _one("Service", env["WORKER_SERVICE"])
    assert headless["spec"]["clusterIP"] == "None"  # DNS answers the pod IPs, the names the gateway uses
    assert headless["spec"].get("publishNotReadyAddresses") is True
    pool = _one("InferencePool")
    assert headless["spec"]["selector"] == pool["spec"]["selector"]["matchLabels"]
    assert _selects(pool["spec"]["selector"]["matchLabels"], _pod_labels(vllm))
    (target,) = pool["spec"]["targetPorts"]
    assert int(env["WORKER_PORT"]) == target["number"] == _container_port(_container(vllm), target["number"])


# ---------------------------------------------------------------------- the model servers, the route, KEDA


def test_vllm_runs_the_engine_plugin_with_the_pickers_slos():
    container = _container(_vllm_deployment())
    assert _env(container)["VLLM_PLUGINS"] == PLUGIN_ENVIRONMENT["VLLM_PLUGINS"]
    args = [str(a) for a in container["args"]]
    extra = json.loads(_flag(args, "--additional-config"))
    settings = dict(extra[ADDITIONAL_CONFIG_KEY])
    profile, ttft, atgt = settings.pop("profile"), settings.pop("ttft_slo"), settings.pop("atgt_slo")
    expected = plugin_flags(profile, ttft, atgt, **settings)
    start = args.index(expected[0])
    assert args[start:start + len(expected) - 1] == expected[:-1]
    assert json.loads(args[start + len(expected) - 1]) == json.loads(expected[-1])
    load_config(extra, environ={})  # the plugin accepts its config
    picker = _picker_args()
    assert float(_flag(picker, "--ttft-slo")) == ttft and float(_flag(picker, "--atgt-slo")) == atgt
    assert int(_flag(args, "--port")) == _one("InferencePool")["spec"]["targetPorts"][0]["number"]
    # the same profile in both: the picker's --profile and the plugin's come from one ConfigMap
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in _vllm_deployment()["spec"]["template"]["spec"]["volumes"]}
    picker_volumes = {v["name"]: v for v in _picker_deployment()["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [path for path in mounts if profile.startswith(path + "/")]
    config_map = volumes[mounts[mount]]["configMap"]["name"]
    assert config_map in {v.get("configMap", {}).get("name") for v in picker_volumes.values()}
    assert Path(profile).name == Path(_flag(picker, "--profile")).name


def test_route_goes_to_the_pool():
    route, pool = _one("HTTPRoute"), _one("InferencePool")
    assert {ref["name"] for rule in route["spec"]["rules"] for ref in rule["backendRefs"]} == {pool["metadata"]["name"]}


def _exported_series() -> set[str]:
    names = set()
    for metric in RouterMetrics().registry.metrics:
        if isinstance(metric, Counter):
            names.add(metric.name + "_total")
        elif isinstance(metric, Gauge):
            names.add(metric.name)
        elif isinstance(metric, Histogram):
            names.update(metric.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_keda_scales_the_model_servers_on_a_series_the_picker_exports():
    scaled = _one("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == _vllm_deployment()["metadata"]["name"]
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    series = set(re.findall(r"\b(aladdin_[a-z0-9_]+)\b", query))
    assert "aladdin_desired_workers" in series and series <= _exported_series()
    selector = re.search(r"aladdin_desired_workers\{([^}]*)\}", query)
    if selector:  # the label the query filters on is the picker pods'
        for key, value in re.findall(r'(\w+)="([^"]*)"', selector.group(1)):
            assert _pod_labels(_picker_deployment()).get(key) == value
