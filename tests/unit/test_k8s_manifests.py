"""deploy/kubernetes validated offline (``make k8s-check``): every object against its schema (core kinds:
Kubernetes' OpenAPI schemas via kubernetes-validate; KEDA's against its vendored CRDs), the security
settings of every pod, and the manifests against the code and the measured figures they rest on."""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from protocol.keys import Keys
from scripts.k8s_secrets import ROLES, secrets_docs
from tests.k8s_support import DEPLOY, ROOT, Doc, pod_specs, render, validate
from training.cli import build_parser as train_parser
from training.loop_settings import LoopSettings
from training.registry_cli import RegistrySettings
from training.settings import TrainSettings
from worker.cli import build_parser as worker_parser
from worker.config import WorkerSettings

OVERLAYS = {"bundled-redis": DEPLOY, "external": DEPLOY / "external"}


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    return render(OVERLAYS[request.param])


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
    return hits[0]


def _config(docs: list[Doc]) -> dict[str, str]:
    return dict(_one(docs, "ConfigMap", "bigru-config")["data"])


def _settings(docs: list[Doc]) -> WorkerSettings:
    """The WorkerSettings a worker pod builds from the ConfigMap (file paths point into the pod: any readable file
    stands in for them here)."""
    env = {k[6:].lower(): v for k, v in _config(docs).items() if k.startswith("BIGRU_")}
    return WorkerSettings(**{k: (__file__ if k.endswith("_file") else v) for k, v in env.items()})


def _container(docs: list[Doc], kind: str, name: str) -> Doc:
    return dict(pod_specs(docs)[f"{kind}/{name}"]["containers"][0])


def test_every_manifest_file_is_rendered_by_a_kustomization() -> None:
    used: set[Path] = set()

    def walk(d: Path) -> None:
        k = yaml.safe_load((d / "kustomization.yaml").read_text())
        used.add((d / "kustomization.yaml").resolve())
        for res in k.get("resources", []):
            if (d / res).is_dir():
                walk(d / res)
            else:
                used.add((d / res).resolve())
        used.update((d / p["path"]).resolve() for p in k.get("patches", []))

    for d in OVERLAYS.values():
        walk(d)
    files = {p.resolve() for p in DEPLOY.rglob("*.yaml") if "schemas" not in p.parts}
    assert files - used == set()


def test_every_object_validates_against_its_schema(docs: list[Doc]) -> None:
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ScaledObject", "TriggerAuthentication", "PodDisruptionBudget", "Job"} <= kinds
    for d in docs:
        validate(d)


@pytest.mark.parametrize("kind,path,value", [
    ("ScaledObject", ["spec", "pollingIntervall"], 15),                    # misspelt field (KEDA CRD)
    ("ScaledObject", ["spec", "advanced", "scalingModifiers", "metricType"], "Average"),  # not in the enum
    ("ScaledObject", ["spec", "minReplicaCount"], "1"),                    # string, not an integer
    ("Deployment", ["spec", "template", "spec", "terminationGracePeriod"], 60),  # misspelt (core, strict)
    ("Deployment", ["spec", "replicas"], "2"),
    ("PodDisruptionBudget", ["spec", "maxUnavailabe"], 1),
])
def test_the_validators_reject_a_broken_object(kind: str, path: list[str], value: Any) -> None:
    doc = copy.deepcopy(next(d for d in render(DEPLOY) if d["kind"] == kind))
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(doc)


def test_every_pod_runs_non_root_read_only_without_privilege_escalation(docs: list[Doc]) -> None:
    specs = pod_specs(docs)
    assert {"Deployment/bigru-worker", "Job/bigru-init", "Job/bigru-train", "Deployment/bigru-loop"} <= set(specs)
    for name, spec in specs.items():
        assert spec.get("automountServiceAccountToken") is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        assert all("hostPath" not in v for v in spec.get("volumes", [])), name
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            res = c.get("resources", {})
            assert res.get("requests", {}).get("memory") and res.get("requests", {}).get("cpu"), where
            assert res.get("limits", {}).get("memory"), where


def _env_names(c: Doc, docs: list[Doc]) -> set[str]:
    names = {e["name"] for e in c.get("env", [])}
    for src in c.get("envFrom", []):
        names |= set(_one(docs, "ConfigMap", src["configMapRef"]["name"])["data"])
    return names


def _settings_env(*classes: type) -> set[str]:
    return {("BIGRU_" + f).upper() for cls in classes for f in cls.model_fields}


def test_every_bigru_variable_is_a_real_setting_and_every_command_parses(docs: list[Doc]) -> None:
    # A misspelt BIGRU_* variable would be silently ignored (the settings classes ignore extras).
    for kind, name, classes in [("Deployment", "bigru-worker", (WorkerSettings,)), ("Job", "bigru-init", (WorkerSettings,)),
                                ("Job", "bigru-train", (TrainSettings, RegistrySettings)),
                                ("Deployment", "bigru-loop", (LoopSettings, WorkerSettings, TrainSettings))]:
        c = _container(docs, kind, name)
        unknown = {n for n in _env_names(c, docs) if n.startswith("BIGRU_")} - _settings_env(*classes)
        assert not unknown, f"{kind}/{name}: not settings: {unknown}"
    # Exec form, no shell: bigru-worker itself is PID 1 and gets the kubelet's SIGTERM.
    worker = _container(docs, "Deployment", "bigru-worker")
    assert worker["command"] == ["bigru-worker"] and not worker.get("args")
    assert _config(docs)["BIGRU_REPLICAS"] == "1"  # one replica process per pod
    assert worker_parser().parse_args(_container(docs, "Job", "bigru-init")["command"][1:]).command == "init"
    train = _container(docs, "Job", "bigru-train")["command"]
    assert train[0] == "bigru-train" and train_parser().parse_args(train[1:]).publish
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = worker[probe]["exec"]["command"]
        assert cmd[0] == "bigru-worker" and worker_parser().parse_args(cmd[1:]).check, probe
    # The settings the pods get are valid settings (the worker would refuse to start otherwise).
    _settings(docs)


def test_probes_fit_the_measured_check_latency_and_the_model_load(docs: list[Doc]) -> None:
    lat = json.loads((ROOT / "results" / "check_latency.json").read_text())["check"]
    worker = _container(docs, "Deployment", "bigru-worker")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker[probe]["timeoutSeconds"] * 1000 >= 4 * lat["p99_ms"], f"{probe} timeout vs p99 {lat['p99_ms']} ms"
    start = worker["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 120  # model load + warm-up on a slow node
    cfg = _settings(docs)
    live = worker["livenessProbe"]
    # A batch may compute up to stall_s with a fresh heartbeat; liveness must not fire before the heartbeat lapses.
    assert live["periodSeconds"] * live["failureThreshold"] >= cfg.stall_s + cfg.heartbeat_ttl_s


def _mib(q: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", q)
    assert m, q
    return float(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


def test_memory_requests_cover_the_measured_rss_and_grace_covers_batch_plus_drain(docs: list[Doc]) -> None:
    fp = json.loads((ROOT / "results" / "footprint.json").read_text())
    serving = max(x for run in fp["runs"]["after"] for x in run["rss_mb"])
    soak = json.loads((ROOT / "results" / "soak.json").read_text())
    soak_max = max(kb for s in soak["samples"] for name, kb in s["rss_kb"].items()
                   if name != "supervisor" and kb is not None) / 1024
    worker = _container(docs, "Deployment", "bigru-worker")
    cfg = _settings(docs)
    req, lim = _mib(worker["resources"]["requests"]["memory"]), _mib(worker["resources"]["limits"]["memory"])
    assert req >= max(serving, soak_max), (req, serving, soak_max)
    assert lim >= max(serving, soak_max) + 2 * cfg.max_batch_bytes / 2**20  # a full batch, twice while parsing
    spec = pod_specs(docs)["Deployment/bigru-worker"]
    drain = json.loads((ROOT / "results" / "scale_in.json").read_text())["sigterm_to_exit_s"]["max"]
    assert spec["terminationGracePeriodSeconds"] > cfg.stall_s + drain


def test_keda_sums_lag_and_pending_over_every_shard(docs: list[Doc]) -> None:
    cfg = _config(docs)
    keys = Keys(cfg["BIGRU_PREFIX"], cfg["BIGRU_GROUP"], int(cfg["BIGRU_SHARDS"]))
    so = _one(docs, "ScaledObject", "bigru-worker")["spec"]
    assert so["scaleTargetRef"]["name"] == "bigru-worker"
    _one(docs, "Deployment", so["scaleTargetRef"]["name"])
    assert 1 <= so["minReplicaCount"] <= so["maxReplicaCount"] and so["cooldownPeriod"] > 0
    by_name = {t["name"]: t for t in so["triggers"]}
    assert len(by_name) == len(so["triggers"])
    lag = {t["metadata"]["stream"] for t in by_name.values() if "lagCount" in t["metadata"]}
    pending = {t["metadata"]["stream"] for t in by_name.values()
               if "pendingEntriesCount" in t["metadata"] and "lagCount" not in t["metadata"]}
    streams = {sk.windows for sk in keys.all_shards()}
    assert lag == streams and pending == streams, "one lag and one pending trigger per shard stream"
    for t in by_name.values():
        assert t["type"] in ("redis-streams", "redis-cluster-streams")
        assert t["metadata"]["consumerGroup"] == keys.group
        assert t["authenticationRef"]["name"] == "bigru-redis"
        _one(docs, "TriggerAuthentication", t["authenticationRef"]["name"])
    mod = so["advanced"]["scalingModifiers"]
    terms = [s.strip() for s in mod["formula"].split("+")]
    assert sorted(terms) == sorted(by_name), "the formula adds every trigger exactly once"
    assert mod["metricType"] == "AverageValue" and int(mod["target"]) > 0
    # replicas = ceil(sum / target): the formula's value over the target, clamped to [min, max].
    backlog = {name: 2500 for name in by_name}
    want = max(so["minReplicaCount"], min(so["maxReplicaCount"], math.ceil(sum(backlog.values()) / int(mod["target"]))))
    assert want == math.ceil(2500 * len(by_name) / int(mod["target"]))


def test_keda_and_the_pods_reach_the_redis_the_config_names(docs: list[Doc]) -> None:
    cfg = _config(docs)
    so = _one(docs, "ScaledObject", "bigru-worker")["spec"]
    url = cfg["BIGRU_REDIS_URL"]
    if url.startswith("redis://"):  # the bundled Redis: a Service in this namespace
        host = url.split("//")[1].split(":")[0]
        svc = _one(docs, "Service", host)
        sts = _one(docs, "StatefulSet", host)
        assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
        ns = svc["metadata"]["namespace"]
        for t in so["triggers"]:
            assert t["type"] == "redis-streams"
            assert t["metadata"]["address"] == f"{host}.{ns}.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
    else:  # external: a TLS cluster URL; KEDA's cluster scaler with TLS and the same hosts
        assert url.startswith("rediss+cluster://")
        host = url.split("//")[1].rsplit("/", 1)[0]
        assert cfg["BIGRU_REDIS_CA_FILE"]
        for t in so["triggers"]:
            assert t["type"] == "redis-cluster-streams" and t["metadata"]["addresses"] == host
        auth = {p["parameter"] for p in _one(docs, "TriggerAuthentication", "bigru-redis")["spec"]["secretTargetRef"]}
        assert {"username", "password", "tls", "ca"} <= auth


def test_every_secret_reference_is_one_the_secrets_script_creates(docs: list[Doc]) -> None:
    external = not any(d["kind"] == "StatefulSet" for d in docs)
    made = {s["metadata"]["name"]: set(s["stringData"]) for s in  # type: ignore[index]
            secrets_docs({r: "x" for r in ROLES},
                         external=external, ca_pem="PEM" if external else None)}
    refs: list[tuple[str, str]] = []
    for spec in pod_specs(docs).values():
        for v in spec.get("volumes", []):
            if "secret" in v:
                refs += [(v["secret"]["secretName"], i["key"]) for i in v["secret"]["items"]]
        for c in spec["containers"]:
            refs += [(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                     for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    for ta in (d for d in docs if d["kind"] == "TriggerAuthentication"):
        refs += [(r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]]
    assert refs
    for name, key in refs:
        assert key in made.get(name, set()), f"secret {name} key {key} is not made by scripts/k8s_secrets.py"


def test_the_loop_runs_recorder_and_watch_with_cpu_limits_of_their_own(docs: list[Doc]) -> None:
    from training.cli import COMMANDS

    spec = pod_specs(docs)["Deployment/bigru-loop"]
    containers = {c["name"]: c for c in spec["containers"]}
    assert set(containers) == {"record", "watch"}
    for name, c in containers.items():
        assert c["command"][0] == "bigru-train" and c["command"][1] == name and name in COMMANDS
        assert c["resources"]["limits"].get("cpu"), name  # retraining never starves serving: its own limit
    assert _one(docs, "Deployment", "bigru-loop")["spec"]["replicas"] == 1  # one recorder group consumer, one judge
    mounts = [{m["mountPath"] for m in c["volumeMounts"]} for c in containers.values()]
    assert "/work/live" in mounts[0] & mounts[1]  # the watcher reads what the recorder writes


def test_pdb_selects_the_worker_pods(docs: list[Doc]) -> None:
    pdb = _one(docs, "PodDisruptionBudget", "bigru-worker")["spec"]
    labels = _one(docs, "Deployment", "bigru-worker")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable")


def test_docs_show_the_commands_that_exist() -> None:
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    for line in re.findall(r"^(?:\$ )?(bigru-worker [^\n`|]+)$", text, re.M):
        worker_parser().parse_args(shlex.split(line)[1:])
    assert "kubectl apply -k deploy/kubernetes" in text
