"""deploy/k8s: valid against the Kubernetes schemas, shaped as warmpool needs, every command real.

(a) Every document validates (strict: unknown fields are errors) against the schemas
    kubernetes-validate ships offline, and kustomization.yaml lists every manifest.
(b) Structure: one pool worker with Recreate, exactly one beat, aws workers that may scale,
    gateway replicas with Flower beside them, configuration from a ConfigMap, tokens from a
    Secret, liveness that only says "alive" and readiness that says "can do its job".
(c) Every container command and exec probe is run with --help, as tests/compose does.
"""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.compose.test_compose import BOTO_ENV, DESIGN_ENV, SURFACE_ENV, _dry_run, _option, _run, _shell_argv

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
NAMESPACE = "warmpool"


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == kind}


def deployment(name: str) -> dict[str, Any]:
    return by_kind("Deployment")[name]


def containers(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}


def container(name: str) -> dict[str, Any]:
    return containers(deployment(name))[name]


def all_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, dep in sorted(by_kind("Deployment").items()):
        for cname, c in containers(dep).items():
            yield f"{name}/{cname}", c


def probe_argv(probe: dict[str, Any]) -> list[str]:
    """An exec probe as argv (a ``sh -c`` one split as the shell would, $HOSTNAME filled)."""
    argv = list(probe["exec"]["command"])
    return _shell_argv(argv[2]) if argv[:2] == ["sh", "-c"] else argv


# -- (a) validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("doc", manifests(), ids=[f"{d['kind']}/{d['metadata']['name']}" for d in manifests()])
def test_every_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"].update(replica=1),  # typo of replicas
        lambda d: d["spec"]["strategy"].update(type=["Recreate"]),  # wrong type
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"].update(execc={}),
    ],
)
def test_the_validator_rejects_what_it_should(mutate: Any) -> None:
    broken = copy.deepcopy(deployment("pool-worker"))
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert kustomization["namespace"] == NAMESPACE
    assert all(d["metadata"].get("namespace", NAMESPACE) == NAMESPACE for d in manifests() if d["kind"] != "Namespace")


def test_kustomize_builds_the_set_and_the_result_validates() -> None:
    """``kubectl kustomize`` (kustomize inside kubectl) renders what ``kubectl apply -k`` would send."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed here (the schema tests above cover each file)")
    run = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    built = [d for d in yaml.safe_load_all(run.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in manifests()
    )
    for doc in built:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "warmpool"
        if doc["kind"] == "Deployment":
            images = {c["image"] for c in doc["spec"]["template"]["spec"]["containers"]}
            assert images == {"warmpool:local"}  # the images: entry of kustomization.yaml applied


# -- (b) structure -----------------------------------------------------------------------------------
def test_one_pool_worker_recreated_never_two() -> None:
    dep = deployment("pool-worker")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    cmd = container("pool-worker")["command"]
    assert cmd[:4] == ["celery", "-A", "tasks", "worker"]
    assert _option(cmd, "-Q") == "pool" and _option(cmd, "-P") == "solo"
    scaled = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind("HorizontalPodAutoscaler").values()}
    assert "pool-worker" not in scaled and "beat" not in scaled


def test_exactly_one_beat() -> None:
    dep = deployment("beat")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert container("beat")["command"][:4] == ["celery", "-A", "tasks", "beat"]


def test_aws_workers_may_scale() -> None:
    cmd = container("aws-worker")["command"]
    assert _option(cmd, "-Q") == "aws" and _option(cmd, "-P") == "threads"
    hpa = by_kind("HorizontalPodAutoscaler")["aws-worker"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "aws-worker"}
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 1
    assert "replicas" not in deployment("aws-worker")["spec"]  # the HPA owns the count


def test_a_drain_keeps_a_gateway_serving() -> None:
    pdb = by_kind("PodDisruptionBudget")["gateway"]
    assert pdb["spec"]["selector"] == deployment("gateway")["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] >= 1 and deployment("gateway")["spec"]["replicas"] > pdb["spec"]["minAvailable"]


def test_gateway_replicas_with_flower_reachable_only_through_them() -> None:
    dep = deployment("gateway")
    assert dep["spec"]["replicas"] >= 2
    gw, flower = containers(dep)["gateway"], containers(dep)["flower"]
    assert gw["command"][:3] == ["python", "-m", "producer.gateway"]
    assert _option(gw["command"], "--host") == "0.0.0.0"  # allowed only because a token is set
    assert _option(flower["command"], "--address") == "127.0.0.1" and "--no-auth" not in flower["command"]
    flower_url = {e["name"]: e.get("value") for e in gw["env"]}["WARMPOOL_FLOWER_URL"]
    assert flower_url == f"http://127.0.0.1:{_option(flower['command'], '--port')}"
    service = by_kind("Service")["gateway"]
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]


def test_configuration_from_the_configmap_and_tokens_from_the_secret() -> None:
    config = by_kind("ConfigMap")["warmpool-config"]["data"]
    known = DESIGN_ENV | SURFACE_ENV | BOTO_ENV
    assert set(config) <= known, set(config) - known
    # real AWS: no endpoint; one pool from the variables (a pools file is the operator's choice: docs/scaling-out.md)
    assert DESIGN_ENV - {"AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "WARMPOOL_CONFIG"} <= set(config)
    secret = by_kind("Secret")["warmpool-secrets"]
    secret_keys = set(secret["stringData"])
    assert secret_keys == {"WARMPOOL_API_TOKEN", "WARMPOOL_FLOWER_PASSWORD"}
    assert not any(secret["stringData"].values()), "no token is shipped: the operator sets them"
    assert not secret_keys & set(config)
    for label, c in all_containers():
        assert {"configMapRef": {"name": "warmpool-config"}} in c["envFrom"], label
        for env in c.get("env", []):
            assert set(env) <= {"name", "value", "valueFrom"}
            assert env["name"] in known, f"{label}: {env['name']}"
            if env["name"] in secret_keys:  # a secret only ever comes from the Secret
                assert env["valueFrom"]["secretKeyRef"]["name"] == "warmpool-secrets", label


def test_no_aws_credentials_in_the_manifests() -> None:
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        assert name not in text


def test_liveness_only_says_alive_readiness_says_it_can_work() -> None:
    # the gateway: alive = /livez (no pool call), ready = /healthz (a status job)
    gw = container("gateway")
    assert gw["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # the workers: alive = their pidfile's process, ready = a job through their own queue
    for name in ("pool-worker", "aws-worker"):
        c = container(name)
        pidfile = _option(c["command"], "--pidfile")
        assert probe_argv(c["livenessProbe"]) == ["python", "-m", "producer.probe", "--pidfile", pidfile]
        node = _option(c["command"], "-n")
        assert node is not None and node.endswith("@%h")
        ready = probe_argv(c["readinessProbe"])
        assert ready[:4] == ["python", "-m", "producer.probe", "--worker"]
        assert ready[4] == node.replace("%h", "probe-host")  # %h is the pod's hostname, as $HOSTNAME
    beat = container("beat")
    assert probe_argv(beat["livenessProbe"])[-1] == _option(beat["command"], "--pidfile")
    # no liveness probe anywhere depends on the pool worker or the broker
    for label, c in all_containers():
        live = c["livenessProbe"]
        text = " ".join(probe_argv(live)) if "exec" in live else live["httpGet"]["path"]
        assert "/healthz" not in text and "--worker" not in text, label


def test_pods_run_unprivileged() -> None:
    for name, dep in by_kind("Deployment").items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["serviceAccountName"] == "warmpool"
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["image"] == "warmpool"  # one image, renamed in kustomization.yaml
            assert "memory" in c["resources"]["limits"]


# -- (c) every command exists ------------------------------------------------------------------------
def _commands() -> list[tuple[str, list[str]]]:
    out = []
    for label, c in all_containers():
        out.append((f"{label}:command", list(c["command"])))
        for kind in ("livenessProbe", "readinessProbe"):
            if "exec" in c.get(kind, {}):
                out.append((f"{label}:{kind}", probe_argv(c[kind])))
    return out


@pytest.mark.parametrize(("label", "argv"), _commands(), ids=[label for label, _ in _commands()])
def test_every_command_exists(label: str, argv: list[str]) -> None:
    run = _run(_dry_run(argv))
    assert run.returncode == 0, f"{label}: {shlex.join(argv)}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    assert run.stdout.strip()
