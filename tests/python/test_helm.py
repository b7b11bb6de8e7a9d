"""The Helm chart lints, renders what Kubernetes needs, and its config and flags are real."""

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from conftest import Server, _binary

CHART = Path(__file__).resolve().parents[2] / "helm" / "quiver"

# Every optional resource switched on.
EVERYTHING = {
    "autoscaling": {"enabled": True},
    "podDisruptionBudget": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "ingress": {"enabled": True, "host": "quiver.example.com", "className": "nginx"},
    "secretEnv": [{"name": "QUIVER_POSTGRES_URL", "secretName": "quiver-db", "key": "url"}],
    "existingSecret": "quiver-env",
}


def render(values=None):
    manifests = helm.Chart.load(CHART).render(values or {}, name="q", namespace="data")
    docs = {}
    for text in manifests.values():
        for doc in yaml.safe_load_all(text):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def container_of(docs):
    return docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def flag_value(args, flag):
    assert flag in args, args
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("values", [{}, {"replicaCount": 3}, EVERYTHING], ids=["default", "replicas", "everything"])
def test_lint_is_clean(values):
    report = helm.lint(str(CHART), values, strict=True)
    errors = [m for m in report["messages"] if m["severity"] >= 2]
    assert not errors and not report["errors"], report


def test_renders_deployment_service_config_and_volume():
    docs = render()
    assert set(docs) == {"ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"}
    deployment = docs["Deployment"]["spec"]
    pod = deployment["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "quiver:0.1.0"
    assert deployment["replicas"] == 1
    assert deployment["strategy"]["type"] == "Recreate"
    assert flag_value(container["args"], "--replicas") == "1"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"flight": 8815, "metrics": 9090}
    service_ports = {p["name"]: p for p in docs["Service"]["spec"]["ports"]}
    assert set(service_ports) == {"flight", "metrics"}
    assert service_ports["flight"]["port"] == 8815 and service_ports["flight"]["appProtocol"] == "grpc"
    assert service_ports["metrics"]["port"] == 9090 and service_ports["metrics"]["targetPort"] == "metrics"
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/etc/quiver", "/var/lib/quiver/data"}
    assert pod["volumes"][1]["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert "[targets.duckdb]" in docs["ConfigMap"]["data"]["quiver.toml"]
    assert "emptyDir" in render({"persistence": {"enabled": False}})["Deployment"]["spec"]["template"]["spec"]["volumes"][1]


def test_probes_use_the_metrics_endpoints():
    container = container_of(render({"metrics": {"port": 9100}}))
    assert flag_value(container["args"], "--metrics-listen") == "0.0.0.0:9100"
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"] == 9100
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "exec" not in container["livenessProbe"] and "exec" not in container["readinessProbe"]


def test_several_replicas_roll_and_share_no_volume():
    docs = render({"replicaCount": 3})
    assert "PersistentVolumeClaim" not in docs
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] == 3
    assert deployment["strategy"]["type"] == "RollingUpdate"
    assert flag_value(deployment["template"]["spec"]["containers"][0]["args"], "--replicas") == "3"
    data = next(v for v in deployment["template"]["spec"]["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "emptyDir": {}}


def test_autoscaling_renders_an_hpa_and_leaves_replicas_to_it():
    docs = render({"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}})
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": docs["Deployment"]["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    deployment = docs["Deployment"]["spec"]
    assert "replicas" not in deployment
    assert deployment["strategy"]["type"] == "RollingUpdate"
    assert flag_value(deployment["template"]["spec"]["containers"][0]["args"], "--replicas") == "6"
    assert "PersistentVolumeClaim" not in docs
    with pytest.raises(helm.HelmError, match="minReplicas"):
        render({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 4}})


def test_optional_resources_render_only_when_enabled():
    assert not {"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "Ingress"} & set(render())
    docs = render({**EVERYTHING, "ingress": {**EVERYTHING["ingress"], "tls": [{"hosts": ["quiver.example.com"], "secretName": "quiver-tls"}]}})
    selector = docs["Deployment"]["spec"]["selector"]["matchLabels"]

    pdb = docs["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}

    monitor = docs["ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    service_labels = docs["Service"]["metadata"]["labels"]
    assert all(service_labels[k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())

    ingress = docs["Ingress"]
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["quiver.example.com"], "secretName": "quiver-tls"}]
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "quiver.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": docs["Service"]["metadata"]["name"], "port": {"name": "flight"}}


def test_credentials_come_from_secrets():
    docs = render({**EVERYTHING, "existingConfigSecret": "quiver-config"})
    container = container_of(docs)
    env = {e["name"]: e for e in container["env"]}
    assert env["QUIVER_POSTGRES_URL"]["valueFrom"]["secretKeyRef"] == {"name": "quiver-db", "key": "url"}
    assert container["envFrom"] == [{"secretRef": {"name": "quiver-env"}}]
    # The config file itself from a Secret: no ConfigMap.
    assert "ConfigMap" not in docs
    config = next(v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert config["secret"] == {"secretName": "quiver-config"}
    plain = container_of(render())
    assert "env" not in plain and "envFrom" not in plain


@pytest.mark.parametrize(
    "values, message",
    [
        ({"replicaCount": "many"}, "replicaCount"),
        ({"replicaCount": 0}, "replicaCount"),
        ({"replicas": 2}, "replicas"),
        ({"metrics": {"prot": 9090}}, "prot"),
        ({"secretEnv": [{"name": "QUIVER_POSTGRES_URL", "secret": "db"}]}, "secretEnv"),
        ({"logFormat": "yaml"}, "logFormat"),
    ],
)
def test_schema_refuses_bad_values(values, message):
    with pytest.raises(helm.HelmValuesError, match=message):
        render(values)
    report = helm.lint(str(CHART), values, strict=True)
    assert report["errors"], report


def test_args_and_probes_are_real_flags():
    serve_help = subprocess.run([_binary(), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for values in ({}, {"replicaCount": 3}, EVERYTHING):
        container = container_of(render(values))
        args = container["args"]
        assert args[0] == "serve"
        for flag in [a for a in args if a.startswith("--")]:
            assert flag in serve_help, flag
        for env in container.get("env", []):
            if env["name"].startswith("QUIVER_"):
                assert f"env: {env['name']}" in serve_help, env["name"]
    assert "/healthz" in serve_help and "/readyz" in serve_help


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rendered_config_starts_a_server(tmp_path):
    import pyarrow.flight as fl

    toml = render()["ConfigMap"]["data"]["quiver.toml"]
    assert re.search(r"\[targets\.parquet\]", toml)
    (tmp_path / "quiver.toml").write_text(toml)
    metrics_port = _free_port()
    srv = Server(
        tmp_path,
        args=[
            "--config",
            "quiver.toml",
            "--data-dir",
            str(tmp_path / "data"),
            "--replicas",
            "1",
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
        ],
    )
    try:
        c = fl.connect(srv.uri)
        names = {a.type for a in c.list_actions()}
        assert "list-targets" in names
        targets = json.loads(next(c.do_action(fl.Action("list-targets", b""))).body.to_pybytes())
        assert {t["name"] for t in targets} == {"parquet", "duckdb"}
        c.close()

        # What the probes and a ServiceMonitor ask for.
        base = f"http://127.0.0.1:{metrics_port}"
        assert _get(f"{base}/healthz")[0] == 200
        deadline = time.monotonic() + 30
        while _get(f"{base}/readyz")[0] != 200:
            assert time.monotonic() < deadline, _get(f"{base}/readyz")
            time.sleep(0.2)
        status, body = _get(f"{base}/metrics")
        assert status == 200 and "quiver_target_up" in body, body
    finally:
        srv.stop()


def test_default_config_with_two_replicas_refused(tmp_path):
    docs = render({"replicaCount": 2})
    args = container_of(docs)["args"]
    assert flag_value(args, "--replicas") == "2"
    config = tmp_path / "quiver.toml"
    config.write_text(docs["ConfigMap"]["data"]["quiver.toml"])
    result = subprocess.run(
        [
            _binary(),
            "serve",
            "--config",
            str(config),
            "--replicas",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode != 0, result.stdout + result.stderr
    assert "[catalog] url" in result.stdout + result.stderr
