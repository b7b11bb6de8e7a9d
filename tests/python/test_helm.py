"""The Helm chart lints, renders what Kubernetes needs, and its config and flags are real."""

import re
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from conftest import Server, _binary

CHART = Path(__file__).resolve().parents[2] / "helm" / "quiver"


def render(values=None):
    manifests = helm.Chart.load(CHART).render(values or {}, name="q", namespace="data")
    docs = {}
    for text in manifests.values():
        for doc in yaml.safe_load_all(text):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_lint_is_clean():
    report = helm.lint(str(CHART), strict=True)
    errors = [m for m in report["messages"] if m["severity"] >= 2]
    assert not errors and not report["errors"], report


def test_renders_deployment_service_config_and_volume():
    docs = render()
    assert set(docs) == {"ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "quiver:0.1.0"
    assert container["ports"][0]["containerPort"] == 8815
    assert docs["Service"]["spec"]["ports"][0]["port"] == 8815
    assert pod["securityContext"]["runAsUser"] == 10001
    assert docs["Deployment"]["spec"]["strategy"]["type"] == "Recreate"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/etc/quiver", "/var/lib/quiver/data"}
    assert "[targets.duckdb]" in docs["ConfigMap"]["data"]["quiver.toml"]
    assert "emptyDir" in render({"persistence": {"enabled": False}})["Deployment"]["spec"]["template"]["spec"]["volumes"][1]


def test_more_than_one_replica_is_refused():
    with pytest.raises(helm.HelmError, match="replicaCount > 1 is not supported"):
        render({"replicaCount": 2})


def test_args_and_probes_are_real_flags():
    container = render()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "serve"
    serve_help = subprocess.run([_binary(), "serve", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in [a for a in args if a.startswith("--")]:
        assert flag in serve_help, flag
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["/usr/local/bin/quiver", "targets"]
    targets_help = subprocess.run([_binary(), "targets", "--help"], capture_output=True, text=True, check=True).stdout
    assert probe[2] in targets_help


def test_rendered_config_starts_a_server(tmp_path):
    import pyarrow.flight as fl

    toml = render()["ConfigMap"]["data"]["quiver.toml"]
    (tmp_path / "quiver.toml").write_text(toml)
    srv = Server(tmp_path, args=["--config", "quiver.toml", "--data-dir", str(tmp_path / "data")])
    try:
        c = fl.connect(srv.uri)
        names = {a.type for a in c.list_actions()}
        assert "list-targets" in names
        import json

        targets = json.loads(next(c.do_action(fl.Action("list-targets", b""))).body.to_pybytes())
        assert {t["name"] for t in targets} == {"parquet", "duckdb"}
        c.close()
    finally:
        srv.stop()
    assert re.search(r"\[targets\.parquet\]", toml)
