"""The Helm chart k8s/sftrl, validated offline (no cluster, no network).

For the default values, each example values file and a values set that turns every feature on:
``helm lint --strict``, ``helm template``, every rendered built-in kind checked with
kubernetes-validate in strict mode, and every RayCluster / RayJob / RayService checked against the
KubeRay v1.7.0 CRD schema (version v1) made strict: unknown fields are rejected wherever the schema
lists properties, so a typo such as ``rayStartParam`` fails. Then facts the deployment relies on.

Needs helm and kubernetes-validate in the venv (scripts/install_k8s_tools.sh) and the KubeRay CRDs
in ../shared/kuberay-crds/ beside the repository (or $SFTRL_KUBERAY_CRDS).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "k8s" / "sftrl"
EXAMPLES = REPO / "k8s" / "examples"
RELEASE = "sftrl"
NAMESPACE = "sftrl-test"
K8S_VERSION = "1.31"
TOKEN = "test-token-not-a-secret"
INSTALL_HINT = "run scripts/install_k8s_tools.sh"

CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}

# A training config given inline (job.config as a mapping).
INLINE_CONFIG = {
    "run_name": "inline",
    "model": "tiny",
    "env": {"id": "sftrl/GeneralPoints-v0", "options": {"prompt_style": "compact"}},
    "stages": [{"kind": "sft", "name": "sft", "steps": 5, "batch_size": 4}],
}

# Every optional feature on, to render (and validate) every branch of the templates.
EVERYTHING: dict[str, Any] = {
    "modelsDir": "/data/models-shared",
    "extraEnv": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
    "podLabels": {"team": "post-training"},
    "podAnnotations": {"example.com/owner": "post-training"},
    "imagePullSecrets": [{"name": "regcred"}],
    "redis": {"enabled": False, "externalUrl": "redis://redis.example.internal:6379/3"},
    "persistence": {"existingClaim": "shared-checkpoints"},
    "cluster": {
        "autoscaling": {"enabled": True, "upscalingMode": "Conservative"},
        "head": {"rayStartParams": {"num-cpus": "0"}},
        "workerGroups": {
            "gpu": {"enabled": True, "gpusPerWorker": 2, "replicas": 1, "minReplicas": 0, "maxReplicas": 3}
        },
    },
    "job": {
        "enabled": True,
        "config": INLINE_CONFIG,
        "overrides": ["stages.0.steps=3", "run_name=it's-quoted"],
        "prepareModels": ["tiny"],
        "activeDeadlineSeconds": 3600,
    },
    "serve": {
        "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
        "appArgs": {"models": ["tiny"]},
        "autoscaling": {"enabled": True},
        "deployments": {"eval": {"numGpus": 1, "maxReplicas": 4}},
        "workerGroups": {"gpu": {"enabled": True, "replicas": 1, "minReplicas": 1, "maxReplicas": 4}},
    },
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "host": "eval.example.com",
        "tlsSecretName": "eval-tls",
        "annotations": {"cert-manager.io/cluster-issuer": "internal-ca"},
    },
}

CASES: dict[str, dict[str, Any]] = {
    "defaults": {"files": [], "set": {"api.token": TOKEN}},
    "laptop": {"files": [EXAMPLES / "values-laptop.yaml"], "set": {"api.token": TOKEN}},
    "8gpu": {"files": [EXAMPLES / "values-8gpu.yaml"], "set": {}},
    "everything": {"files": ["EVERYTHING"], "set": {"api.token": TOKEN}},
}

RAY_KINDS = set(CRD_FILES)


# ---------------------------------------------------------------------------------------------
# tools


def _helm_binary() -> str:
    candidate = Path(sys.prefix) / "bin" / "helm"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("helm")
    if found is None:
        pytest.fail(f"helm not found in {candidate.parent} nor on PATH: {INSTALL_HINT}")
    return found


def _crd_dir() -> Path:
    given = os.environ.get("SFTRL_KUBERAY_CRDS")
    folder = Path(given) if given else Path(__file__).resolve().parents[2] / "shared" / "kuberay-crds"
    missing = [name for name in CRD_FILES.values() if not (folder / name).is_file()]
    if missing:
        pytest.fail(
            f"KubeRay CRDs not found: {folder} lacks {', '.join(missing)}. Put the KubeRay v1.7.0 CRDs "
            "(ray-operator/config/crd/bases/ray.io_*.yaml) there or point SFTRL_KUBERAY_CRDS at them."
        )
    return folder


def _strict_schema(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema that rejects fields it does not list.

    Where a schema gives ``properties`` but neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields``, unknown fields become errors (the API server prunes
    them silently instead, which hides typos).
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: _strict_schema(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            out[key] = _strict_schema(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out[key] = [_strict_schema(sub) for sub in schema[key]]
    return out


class Chart:
    """Runs helm on the chart and validates what it renders; renders are cached per case."""

    def __init__(self, workdir: Path) -> None:
        self.helm = _helm_binary()
        self.workdir = workdir
        self.env = dict(os.environ)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            self.env[var] = str(workdir / var.lower())
        self.everything = workdir / "values-everything.yaml"
        self.everything.write_text(yaml.safe_dump(EVERYTHING, sort_keys=False))
        self._renders: dict[str, list[dict[str, Any]]] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.helm, *args], capture_output=True, text=True, env=self.env, timeout=120, check=False
        )

    def value_args(self, case: str, extra: tuple[str, ...] = ()) -> list[str]:
        spec = CASES[case]
        args: list[str] = []
        for f in spec["files"]:
            args += ["-f", str(self.everything if f == "EVERYTHING" else f)]
        for key, value in spec["set"].items():
            args += ["--set", f"{key}={value}"]
        return args + list(extra)

    def template(self, case: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *self.value_args(case, extra)
        )

    def render(self, case: str, *extra: str) -> list[dict[str, Any]]:
        key = "\0".join((case, *extra))
        if key not in self._renders:
            proc = self.template(case, *extra)
            assert proc.returncode == 0, f"helm template ({case}) failed:\n{proc.stderr}"
            docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
            assert docs, f"helm template ({case}) rendered nothing"
            self._renders[key] = docs
        return copy.deepcopy(self._renders[key])

    def crd_validator(self, kind: str) -> jsonschema.protocols.Validator:
        if kind not in self._validators:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1 MB each
            crd = yaml.load((_crd_dir() / CRD_FILES[kind]).read_text(), Loader=loader)
            assert crd["spec"]["names"]["kind"] == kind
            (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            schema = _strict_schema(version["schema"]["openAPIV3Schema"])
            self._validators[kind] = jsonschema.Draft7Validator(schema)
        return self._validators[kind]


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Chart:
    return Chart(tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="module")
def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"kubernetes-validate is not installed: {INSTALL_HINT}")
    return kubernetes_validate


# ---------------------------------------------------------------------------------------------
# helpers over rendered documents


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = _by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }[doc["kind"]]


def _groups(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group name, group spec) of the head and the worker groups of a Ray custom resource."""
    spec = _cluster_spec(doc)
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def _ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ---------------------------------------------------------------------------------------------
# lint, render, schemas


@pytest.mark.parametrize("case", list(CASES))
def test_helm_lint_strict(chart: Chart, case: str) -> None:
    proc = chart.run("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *chart.value_args(case))
    assert proc.returncode == 0, f"helm lint --strict ({case}):\n{proc.stdout}\n{proc.stderr}"
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("case", list(CASES))
def test_render_names_and_labels(chart: Chart, case: str) -> None:
    docs = chart.render(case)
    seen = set()
    for doc in docs:
        meta = doc["metadata"]
        key = (doc["kind"], meta["name"])
        assert key not in seen, f"{key} rendered twice"
        seen.add(key)
        assert len(meta["name"]) <= 63
        labels = meta.get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, key
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", key
    kinds = {doc["kind"] for doc in docs}
    assert "RayService" in kinds
    assert ("Secret" in kinds) == (case != "8gpu")


@pytest.mark.parametrize("case", list(CASES))
def test_builtin_kinds_are_valid_kubernetes(chart: Chart, kubernetes_validate, case: str) -> None:
    builtin = [d for d in chart.render(case) if not d["apiVersion"].startswith("ray.io/")]
    assert builtin
    for doc in builtin:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            pytest.fail(
                f"{case}: {name} is not a valid Kubernetes {K8S_VERSION} object at {path}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{case}: {name}: {exc.message}")


@pytest.mark.parametrize("case", list(CASES))
def test_ray_resources_match_kuberay_crds(chart: Chart, case: str) -> None:
    docs = chart.render(case)
    ray_docs = [d for d in docs if d["apiVersion"].startswith("ray.io/")]
    assert ray_docs, "no KubeRay resources rendered"
    for doc in ray_docs:
        assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
        assert doc["kind"] in RAY_KINDS, doc["kind"]
        assert _cluster_spec(doc)["authOptions"] == {"mode": "token"}, "Ray token auth must stay on"
        errors = sorted(chart.crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            lines = [f"  {'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:10]]
            pytest.fail(
                f"{case}: {doc['kind']}/{doc['metadata']['name']} violates the KubeRay CRD:\n"
                + "\n".join(lines)
            )


def test_strict_crd_check_catches_typos(chart: Chart) -> None:
    docs = chart.render("defaults")
    cluster = _one(docs, "RayCluster")
    validator = chart.crd_validator("RayCluster")
    assert not list(validator.iter_errors(cluster))

    typo = copy.deepcopy(cluster)
    head = typo["spec"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    messages = [e.message for e in validator.iter_errors(typo)]
    assert any("rayStartParam" in m for m in messages), messages

    deep = copy.deepcopy(cluster)
    container = _ray_container(deep["spec"]["workerGroupSpecs"][0])
    container["imagePulPolicy"] = container.pop("imagePullPolicy")
    assert any("imagePulPolicy" in e.message for e in validator.iter_errors(deep))

    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    assert list(validator.iter_errors(wrong_type))


# ---------------------------------------------------------------------------------------------
# values.schema.json


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "cluster.workerGroups.cpu.replicas=two"], "replicas"),
        (["--set-string", "serve.deployments.eval.maxReplicas=2"], "maxReplicas"),
        (["--set", "cluster.head.rayStartParam.num-cpus=0"], "rayStartParam"),
        (["--set", "serv.enabled=false"], "serv"),
        (["--set", "image.flavor=rocm"], "flavor"),
        (["--set", "rayAuthMode=none"], "rayAuthMode"),
        (["--set", "persistence.accessModes={ReadWriteSometimes}"], "accessModes"),
        (["--set", "cluster.head.rayStartParams.num-cpus=0"], "num-cpus"),
        (["--set", "kuberay.version=latest"], "version"),
    ],
    ids=[
        "string-for-int",
        "quoted-int",
        "unknown-key",
        "unknown-top-level",
        "enum",
        "auth-mode",
        "enum-in-list",
        "int-for-string",
        "kuberay-version",
    ],
)
def test_bad_values_fail_the_schema(chart: Chart, args: list[str], expected: str) -> None:
    proc = chart.template("defaults", *args)
    assert proc.returncode != 0, f"rendering with {args} should fail"
    assert "don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_values_yaml_matches_its_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))
    examples = sorted(EXAMPLES.glob("values-*.yaml"))
    assert [e.name for e in examples] == ["values-8gpu.yaml", "values-laptop.yaml"]
    for values in [yaml.safe_load((CHART / "values.yaml").read_text())] + [
        yaml.safe_load(e.read_text()) for e in examples
    ]:
        assert not values.get("api", {}).get("token"), "a token must never be stored in a values file"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "api.token"),
        (["--set", "api.token=x", "--set", "job.enabled=true"], "job.config"),
        (
            [
                "--set",
                "api.token=x",
                "--set",
                "job.enabled=true",
                "--set",
                "job.config=a: 1",
                "--set",
                "job.configPath=/x",
            ],
            "not both",
        ),
        (["--set", "api.token=x", "--set", "cluster.workerGroups.cpu.replicas=9"], "minReplicas <= replicas"),
        (["--set", "api.token=x", "--set", "redis.enabled=false"], "redis.externalUrl"),
        (["--set", "api.token=x", "--set", "redis.externalUrl=redis://r:6379/0"], "redis.enabled=false"),
    ],
    ids=["no-token", "job-without-config", "two-configs", "replica-bounds", "no-redis", "two-redis"],
)
def test_inconsistent_values_fail_with_a_message(chart: Chart, args: list[str], expected: str) -> None:
    proc = chart.run("template", RELEASE, str(CHART), *args)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr


def test_endpoint_disabled_needs_no_token(chart: Chart) -> None:
    proc = chart.run("template", RELEASE, str(CHART), "--set", "serve.enabled=false")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert "RayService" not in {d["kind"] for d in docs}
    secrets = [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"]
    assert secrets == [f"{RELEASE}-redis"]  # no API token; Redis keeps its password


# ---------------------------------------------------------------------------------------------
# facts the deployment relies on


def test_gpu_groups_request_gpus_in_the_8gpu_example(chart: Chart) -> None:
    docs = chart.render("8gpu")
    job, service = _one(docs, "RayJob"), _one(docs, "RayService")
    gpus = {}
    for doc in (job, service):
        groups = dict(_groups(doc))
        assert "gpu-workers" in groups, doc["kind"]
        group = groups["gpu-workers"]
        pod = group["template"]["spec"]
        container = _ray_container(group)
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"] >= 1
        gpus[doc["kind"]] = limits["nvidia.com/gpu"] * group["replicas"]
        assert container["image"].endswith("-cuda")
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert "nvidia.com/gpu" not in _ray_container(groups["head"])["resources"]["limits"]
    assert sum(gpus.values()) <= 8, gpus
    assert _cluster_spec(service)["enableInTreeAutoscaling"] is True
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    (evaluator,) = [d for d in serve["applications"][0]["deployments"] if d["name"] == "EvalReplica"]
    assert evaluator["ray_actor_options"]["num_gpus"] == 1
    assert (
        evaluator["autoscaling_config"]["max_replicas"]
        <= dict(_groups(service))["gpu-workers"]["maxReplicas"]
    )


def test_no_gpus_in_the_laptop_example(chart: Chart) -> None:
    for doc in chart.render("laptop"):
        if doc["kind"] in RAY_KINDS:
            for name, group in _groups(doc):
                limits = _ray_container(group)["resources"].get("limits", {})
                assert "nvidia.com/gpu" not in limits, (doc["kind"], name)
                assert _ray_container(group)["image"].endswith("-cpu")


@pytest.mark.parametrize("case", list(CASES))
def test_token_secret_is_referenced_by_the_serve_pods(chart: Chart, case: str) -> None:
    docs = chart.render(case)
    secrets = {
        d["metadata"]["name"]: d for d in _by_kind(docs, "Secret") if "redis" not in d["metadata"]["name"]
    }
    if case == "8gpu":
        assert not secrets, "an existing Secret was named: the chart must not create one"
        expected = "sftrl-api-token"
    else:
        (expected,) = secrets
        assert base64.b64decode(secrets[expected]["data"]["token"]).decode() == TOKEN
    service = _one(docs, "RayService")
    for name, group in _groups(service):
        ref = _env(_ray_container(group))["SFTRL_API_TOKEN"]["secretKeyRef"]
        assert ref == {"name": expected, "key": "token"}, name
    for doc in docs:
        if doc["kind"] in ("RayCluster", "RayJob"):
            for name, group in _groups(doc):
                assert "SFTRL_API_TOKEN" not in _env(_ray_container(group)), (doc["kind"], name)


def test_serve_pods_put_the_gate_in_front_of_the_http_proxy(chart: Chart) -> None:
    """Serve's HTTP proxy runs the endpoint's token and body-size gate (it reads $SFTRL_API_TOKEN), with
    the app's body limit, so an anonymous or oversized body is refused before it is forwarded."""
    from ray.serve._private.utils import import_attr

    from deploy.evaluate.serve.guard import PROXY_CALLBACK, PROXY_LIMIT_ENV, proxy_middlewares

    for extra, limit in (((), "65536"), (("--set", "serve.appArgs.max_body_bytes=8192"), "8192")):
        for name, group in _groups(_one(chart.render("defaults", *extra), "RayService")):
            env = _env(_ray_container(group))
            assert import_attr(env[PROXY_CALLBACK]) is proxy_middlewares, name
            assert env[PROXY_LIMIT_ENV] == limit, name


def test_redis_statefulset_keeps_its_data(chart: Chart) -> None:
    docs = chart.render("defaults")
    sts = _one(docs, "StatefulSet")
    assert sts["metadata"]["name"] == f"{RELEASE}-redis"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert (
        args[args.index("--maxmemory") + 1] == "768mb"
        and args[args.index("--maxmemory-policy") + 1] == "noeviction"
    )
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    services = {d["metadata"]["name"]: d for d in _by_kind(docs, "Service")}
    assert sts["spec"]["serviceName"] in services
    assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    redis_svc = services[f"{RELEASE}-redis"]
    assert redis_svc["spec"]["ports"][0]["port"] == 6379
    assert redis_svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    # the password: a random one in the chart's Secret, given to Redis and to every sftrl pod from it
    secret = {d["metadata"]["name"]: d for d in _by_kind(docs, "Secret")}[f"{RELEASE}-redis"]
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) == 32 and password.isalnum()
    from_secret = {"secretKeyRef": {"name": f"{RELEASE}-redis", "key": "password"}}
    # a shell hands the password to redis-server on its standard input ("-"), not on its command line
    assert args[:2] == ["/bin/sh", "-c"] and args[3] == "redis-server"
    assert args[2].startswith('exec redis-server - "$@" <<EOF\n') and "$REDIS_PASSWORD" in args[2]
    assert (
        _env(container)["REDIS_PASSWORD"] == from_secret and _env(container)["REDISCLI_AUTH"] == from_secret
    )
    for doc in docs:
        if doc["kind"] in RAY_KINDS:
            for _, group in _groups(doc):
                env = _ray_container(group)["env"]
                names = [e["name"] for e in env]
                assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")  # defined first: $() expands
                assert _env(_ray_container(group))["REDIS_PASSWORD"] == from_secret
                url = _env(_ray_container(group))["REDIS_URL"]
                assert url == f"redis://:$(REDIS_PASSWORD)@{RELEASE}-redis:6379/0" and password not in url


def test_external_redis_replaces_the_statefulset(chart: Chart) -> None:
    docs = chart.render("everything")
    assert not _by_kind(docs, "StatefulSet")
    for doc in docs:
        if doc["kind"] in RAY_KINDS:
            for _, group in _groups(doc):
                env = _env(_ray_container(group))
                assert env["REDIS_URL"] == EVERYTHING["redis"]["externalUrl"]
                assert env["SFTRL_MODELS_DIR"] == EVERYTHING["modelsDir"]
                assert env["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("case", list(CASES))
def test_every_ray_pod_mounts_the_shared_volume(chart: Chart, case: str) -> None:
    docs = chart.render(case)
    claims = _by_kind(docs, "PersistentVolumeClaim")
    if case == "everything":
        assert not claims
        claim_name = EVERYTHING["persistence"]["existingClaim"]
    else:
        (claim,) = claims
        claim_name = claim["metadata"]["name"]
        assert claim["spec"]["accessModes"]
    pods = 0
    for doc in docs:
        if doc["kind"] not in RAY_KINDS:
            continue
        for name, group in _groups(doc):
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            container = _ray_container(group)
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == claim_name, (
                doc["kind"],
                name,
            )
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
            assert _env(container)["SFTRL_HOME"] == "/data"
            assert pod["securityContext"]["runAsNonRoot"] is True
            pods += 1
    assert pods >= 2


def test_defaults_run_a_training_cluster_and_no_job(chart: Chart) -> None:
    docs = chart.render("defaults")
    cluster = _one(docs, "RayCluster")
    assert cluster["metadata"]["name"] == RELEASE
    assert not _by_kind(docs, "RayJob")
    assert "enableInTreeAutoscaling" not in cluster["spec"]
    groups = dict(_groups(cluster))
    assert set(groups) == {"head", "cpu-workers"}
    ports = {p["name"]: p["containerPort"] for p in _ray_container(groups["head"])["ports"]}
    assert ports["dashboard"] == 8265 and ports["client"] == 10001 and ports["gcs-server"] == 6379
    assert groups["head"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"


def test_rayjob_runs_sftrl_train_on_its_own_cluster(chart: Chart) -> None:
    docs = chart.render("laptop")
    assert not _by_kind(docs, "RayCluster")
    job = _one(docs, "RayJob")
    spec = job["spec"]
    assert spec["entrypoint"] == (
        "sftrl models prepare 'tiny' && "
        "sftrl train --config '/opt/sftrl/configs/quickstart.yaml' --resume auto --restart 'output_dir=/data/runs'"
    )
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 300
    assert "clusterSelector" not in spec and spec["rayClusterSpec"]["headGroupSpec"]
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    assert job["metadata"]["name"].startswith(f"{RELEASE}-train-")


def test_rayjob_with_inline_config_mounts_its_configmap(chart: Chart) -> None:
    docs = chart.render("everything")
    job = _one(docs, "RayJob")
    config_map = _one(docs, "ConfigMap")
    assert yaml.safe_load(config_map["data"]["train.yaml"]) == INLINE_CONFIG
    assert job["spec"]["entrypoint"] == (
        "sftrl models prepare 'tiny' && sftrl train --config '/etc/sftrl/job/train.yaml' --resume auto --restart "
        "'stages.0.steps=3' 'run_name=it'\\''s-quoted'"
    )
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    volumes = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _ray_container(head)["volumeMounts"]}
    assert volumes[mounts["/etc/sftrl/job"]]["configMap"]["name"] == config_map["metadata"]["name"]
    assert job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"] is True


def test_rayjob_takes_a_config_file_as_text(chart: Chart) -> None:
    config = REPO / "configs" / "quickstart.yaml"
    args = ("--set", "job.enabled=true", "--set-file", f"job.config={config}")
    docs = chart.render("defaults", *args)
    assert _one(docs, "ConfigMap")["data"]["train.yaml"].strip() == config.read_text().strip()
    first = _one(docs, "RayJob")["metadata"]["name"]
    other = _one(chart.render("defaults", *args, "--set", "job.overrides={seed=1}"), "RayJob")["metadata"][
        "name"
    ]
    assert first != other, "a different run must get a different RayJob name"


@pytest.mark.parametrize("case", list(CASES))
def test_rayservice_serves_the_sftrl_application(chart: Chart, case: str) -> None:
    docs = chart.render(case)
    service = _one(docs, "RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["name"] == "sftrl" and app["route_prefix"] == "/"
    assert app["import_path"] == "deploy.evaluate.serve.app:build_app"
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"SftrlAPI", "EvalReplica"}
    assert deployments["SftrlAPI"]["num_replicas"] >= 1
    scaling = deployments["EvalReplica"]["autoscaling_config"]
    assert 0 <= scaling["min_replicas"] <= scaling["max_replicas"] and scaling["target_ongoing_requests"] > 0
    assert set(deployments["EvalReplica"]["ray_actor_options"]) == {"num_cpus", "num_gpus"}
    assert serve["http_options"]["port"] == 8000
    assert service["spec"]["serveService"]["metadata"]["name"] == f"{RELEASE}-eval"
    assert service["spec"]["serveService"]["spec"]["ports"] == [{"name": "serve", "port": 8000}]
    head = _ray_container(service["spec"]["rayClusterConfig"]["headGroupSpec"])
    assert {"name": "serve", "containerPort": 8000} in head["ports"]


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], bool]]:
    """(where, pod spec, may talk to the Kubernetes API) of every pod the chart makes."""
    pods = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "StatefulSet":
            pods.append((name, doc["spec"]["template"]["spec"], False))
        if doc["kind"] in RAY_KINDS:
            autoscaling = bool(_cluster_spec(doc).get("enableInTreeAutoscaling"))
            for group, spec in _groups(doc):
                pods.append((f"{name}/{group}", spec["template"]["spec"], group == "head" and autoscaling))
        if doc["kind"] == "RayJob":
            pods.append((f"{name}/submitter", doc["spec"]["submitterPodTemplate"]["spec"], False))
    return pods


@pytest.mark.parametrize("case", list(CASES))
def test_every_pod_meets_pod_security_restricted(chart: Chart, case: str) -> None:
    """Kubernetes' "restricted" profile: non-root, RuntimeDefault seccomp, no privilege escalation, every
    capability dropped; and no service-account token where no API access is needed."""
    pods = _pod_specs(chart.render(case))
    assert pods
    for where, pod, needs_api in pods:
        pod_ctx = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is needs_api, where
        for container in pod["containers"]:
            ctx = container.get("securityContext", {})
            assert ctx.get("allowPrivilegeEscalation") is False and not ctx.get("privileged"), where
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), where
            assert True in (ctx.get("runAsNonRoot"), pod_ctx.get("runAsNonRoot")), where
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 1)) != 0, where
            seccomp = ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}
            assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), where
            for volume in pod.get("volumes", []):
                assert "hostPath" not in volume, where


def test_network_policies_fence_redis_and_keep_metrics_inside(chart: Chart) -> None:
    docs = chart.render("defaults")
    policies = {d["metadata"]["name"]: d["spec"] for d in _by_kind(docs, "NetworkPolicy")}
    redis = policies[f"{RELEASE}-redis"]
    assert redis["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    (rule,) = redis["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE,
                                                             "app.kubernetes.io/part-of": "sftrl"}}}]  # fmt: skip
    # every pod of the release carries the labels the policies admit
    for doc in docs:
        if doc["kind"] in RAY_KINDS:
            for _, group in _groups(doc):
                labels = group["template"]["metadata"]["labels"]
                assert (
                    labels["app.kubernetes.io/instance"] == RELEASE
                    and labels["app.kubernetes.io/part-of"] == "sftrl"
                )
    # the metrics port is open to the namespace only; from anywhere, only the endpoint's port
    for name, spec in policies.items():
        for rule in spec["ingress"]:
            ports = {p["port"] for p in rule.get("ports", [])}
            sources = rule.get("from")
            if sources is None or any(
                "namespaceSelector" in s and not s["namespaceSelector"] for s in sources
            ):
                assert ports == {8000}, name
            if 8080 in ports:
                assert sources == [{"podSelector": {}}], name
    off = chart.run(
        "template", RELEASE, str(CHART), "--set", f"api.token={TOKEN}", "--set", "networkPolicy.enabled=false"
    )
    assert off.returncode == 0 and "kind: NetworkPolicy" not in off.stdout


# ---------------------------------------------------------------------------------------------
# hardening: the KubeRay floor, the dashboard port, TLS in front of the endpoint, the Redis password

# Values that render each kind of Ray resource alone.
ONLY_KIND = {
    "RayCluster": ("--set", "serve.enabled=false"),
    "RayJob": (
        "--set",
        "serve.enabled=false",
        "--set",
        "cluster.enabled=false",
        "--set",
        "job.enabled=true",
        "--set",
        "job.configPath=/opt/sftrl/configs/quickstart.yaml",
    ),
    "RayService": ("--set", "cluster.enabled=false"),
}


@pytest.mark.hostile
@pytest.mark.parametrize("kind", list(ONLY_KIND))
def test_a_kuberay_that_would_drop_auth_options_is_refused(chart: Chart, kind: str) -> None:
    """KubeRay's CRDs know authOptions from 1.5.1 on: an older operator's API server prunes it without
    a word and Ray runs without KubeRay's token authentication, so the render must fail instead."""
    for version in ("1.5.0", "1.5.0-rc.1", "1.4.2", "v1.3.0"):
        proc = chart.template("defaults", *ONLY_KIND[kind], "--set", f"kuberay.version={version}")
        assert proc.returncode != 0, f"{kind} rendered for KubeRay {version}"
        assert f"kuberay.version is {version}" in proc.stderr and "authOptions" in proc.stderr, proc.stderr
        assert "1.5.1" in proc.stderr, proc.stderr
    for version in ("1.5.1", "1.6.0-rc.0", "v1.7.0", "2.0.0"):
        docs = chart.render("defaults", *ONLY_KIND[kind], "--set", f"kuberay.version={version}")
        assert [d["kind"] for d in docs if d["kind"] in RAY_KINDS] == [kind]
        assert _cluster_spec(_one(docs, kind))["authOptions"] == {"mode": "token"}
    assert yaml.safe_load((CHART / "values.yaml").read_text())["kuberay"]["version"] == "1.7.0"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects these labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and key in labels and labels[key] in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def _admits(
    policies: list[dict[str, Any]], pod: dict[str, str], peer: dict[str, str], peer_ns: str, port: int
) -> bool:
    """Whether the release's NetworkPolicies (in NAMESPACE) let a pod with labels ``peer`` in namespace
    ``peer_ns`` reach TCP ``port`` of a pod with labels ``pod``, as Kubernetes evaluates them."""
    selecting = [p["spec"] for p in policies if _selects(p["spec"]["podSelector"], pod)]
    if not selecting:
        return True
    for spec in selecting:
        assert spec["policyTypes"] == ["Ingress"]
        for rule in spec.get("ingress", []):
            ports = rule.get("ports", [])
            assert all(p["protocol"] == "TCP" and isinstance(p["port"], int) for p in ports), ports
            if ports and not any(p["port"] <= port <= p.get("endPort", p["port"]) for p in ports):
                continue
            if "from" not in rule:
                return True
            for source in rule["from"]:
                assert "ipBlock" not in source, source
                if "namespaceSelector" in source:
                    in_ns = _selects(source["namespaceSelector"], {"kubernetes.io/metadata.name": peer_ns})
                else:
                    in_ns = peer_ns == NAMESPACE
                if in_ns and _selects(source.get("podSelector", {}), peer):
                    return True
    return False


def _pod_labels(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Labels of every pod the chart makes, by where it comes from."""
    labels = {}
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "StatefulSet":
            labels[name] = doc["spec"]["template"]["metadata"]["labels"]
        if doc["kind"] in RAY_KINDS:
            for group, spec in _groups(doc):
                labels[f"{name}/{group}"] = spec["template"]["metadata"]["labels"]
        if doc["kind"] == "RayJob":
            labels[f"{name}/submitter"] = doc["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    return labels


@pytest.mark.hostile
def test_only_job_submitters_and_the_operator_reach_the_dashboard_port(chart: Chart) -> None:
    """Port 8265 of a Ray head takes jobs, that is code to run: only the RayJob's submitter, the
    KubeRay operator and networkPolicy.dashboardFrom reach it, not the release's other pods (a
    compromised worker or endpoint replica), not the namespace and not the world. Ray's other ports
    stay open between the release's Ray pods."""
    job = ("--set", "job.enabled=true", "--set", "job.configPath=/opt/sftrl/configs/quickstart.yaml")
    docs = chart.render("defaults", *job)
    policies = _by_kind(docs, "NetworkPolicy")
    pods = _pod_labels(docs)
    heads = {name: labels for name, labels in pods.items() if name.endswith("/head")}
    ray_pods = {name: labels for name, labels in pods.items() if name.split("/")[0] in RAY_KINDS}
    ray_pods = {name: labels for name, labels in ray_pods.items() if not name.endswith("/submitter")}
    (submitter,) = [labels for name, labels in pods.items() if name.endswith("/submitter")]
    (redis,) = [labels for name, labels in pods.items() if name.startswith("StatefulSet/")]
    assert len(heads) == 3 and len(ray_pods) == 6
    operator_ns = "kuberay-operator"
    for head_name, head in heads.items():
        assert _admits(policies, head, submitter, NAMESPACE, 8265), head_name
        assert _admits(policies, head, {}, operator_ns, 8265), head_name
        for name, peer in ray_pods.items():
            assert not _admits(policies, head, peer, NAMESPACE, 8265), (head_name, name)
            for port in (6379, 10001, 8000, 8080, 8264, 8266, 52365, 20000, 65535):
                assert _admits(policies, head, peer, NAMESPACE, port), (head_name, name, port)
        assert not _admits(policies, head, submitter, NAMESPACE, 6379), head_name  # the dashboard only
        for peer, ns in ((redis, NAMESPACE), ({"app": "other"}, NAMESPACE), ({}, "elsewhere")):
            assert not _admits(policies, head, peer, ns, 8265), (head_name, peer, ns)
        assert _admits(policies, head, {"app": "prometheus"}, NAMESPACE, 8080), head_name  # metrics
        assert not _admits(policies, head, {"app": "other"}, NAMESPACE, 6379), head_name
    # more clients of the dashboard are named explicitly, and get nothing else
    ci = ("--set", "networkPolicy.dashboardFrom[0].podSelector.matchLabels.app=ci")
    policies = _by_kind(chart.render("defaults", *job, *ci), "NetworkPolicy")
    for head_name, head in heads.items():
        assert _admits(policies, head, {"app": "ci"}, NAMESPACE, 8265), head_name
        assert not _admits(policies, head, {"app": "ci"}, NAMESPACE, 6379), head_name
        assert not _admits(policies, head, {"app": "other"}, NAMESPACE, 8265), head_name


INGRESS = ("--set", "ingress.enabled=true", "--set", "ingress.host=eval.example.com")


@pytest.mark.hostile
def test_the_ingress_is_off_by_default_and_terminates_tls(chart: Chart) -> None:
    assert not _by_kind(chart.render("defaults"), "Ingress")
    tls = ("--set", "ingress.tlsSecretName=eval-tls", "--set", "ingress.className=nginx")
    docs = chart.render("defaults", *INGRESS, *tls)
    spec = _one(docs, "Ingress")["spec"]
    assert spec["tls"] == [{"hosts": ["eval.example.com"], "secretName": "eval-tls"}]
    assert spec["ingressClassName"] == "nginx"
    (rule,) = spec["rules"]
    assert rule["host"] == "eval.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["pathType"] == "Prefix"
    served = _one(docs, "RayService")["spec"]["serveService"]  # the Service KubeRay makes
    assert path["backend"]["service"] == {
        "name": served["metadata"]["name"],
        "port": {"number": served["spec"]["ports"][0]["port"]},
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "ingress.tlsSecretName"),
        (["--set", "ingress.tlsSecretName=eval-tls", "--set", "ingress.host="], "ingress.host"),
        (["--set", "ingress.tlsSecretName=eval-tls", "--set", "serve.enabled=false"], "serve.enabled=true"),
    ],
    ids=["no-tls", "no-host", "no-endpoint"],
)
@pytest.mark.hostile
def test_an_ingress_without_tls_or_a_host_is_refused(chart: Chart, args: list[str], expected: str) -> None:
    proc = chart.template("defaults", *INGRESS, *args)
    assert proc.returncode != 0, f"an Ingress rendered with {args}"
    assert expected in proc.stderr, proc.stderr


@pytest.mark.hostile
def test_a_plain_http_ingress_must_be_asked_for(chart: Chart) -> None:
    refused = chart.template("defaults", *INGRESS)
    assert refused.returncode != 0
    assert "clear text" in refused.stderr and "ingress.allowPlainHttp=true" in refused.stderr, refused.stderr
    ingress = _one(chart.render("defaults", *INGRESS, "--set", "ingress.allowPlainHttp=true"), "Ingress")
    assert "tls" not in ingress["spec"]
    assert ingress["spec"]["rules"][0]["host"] == "eval.example.com"


def _command_lines(docs: list[dict[str, Any]]) -> list[tuple[str, list[str], set[str]]]:
    """(where, command and args, names of the env vars it takes from Secrets) of every container."""
    found = []
    for where, pod, _ in _pod_specs(docs):
        for container in pod.get("initContainers", []) + pod["containers"]:
            secret_env = {
                e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
            }
            words = list(container.get("command", [])) + list(container.get("args", []))
            found.append((f"{where}/{container['name']}", words, secret_env))
    return found


@pytest.mark.hostile
def test_the_redis_password_is_on_no_command_line(chart: Chart) -> None:
    """Kubernetes expands $(VAR) in command and args, so `--requirepass $(REDIS_PASSWORD)` puts the
    password on redis-server's command line, where ps and /proc/PID/cmdline show it to anyone on the
    node. No container may take a Secret's value, or the password itself, on its command line."""
    job = ("--set", "job.enabled=true", "--set", "job.configPath=/opt/sftrl/configs/quickstart.yaml")
    docs = chart.render("defaults", *job)
    secret = {d["metadata"]["name"]: d for d in _by_kind(docs, "Secret")}[f"{RELEASE}-redis"]
    password = base64.b64decode(secret["data"]["password"]).decode()
    lines = _command_lines(docs)
    assert any(where.startswith("StatefulSet/") for where, _, _ in lines)
    assert sum("REDIS_PASSWORD" in secret_env for _, _, secret_env in lines) >= 7  # Redis and 6 Ray pods
    for where, words, secret_env in lines:
        for word in words:
            assert password not in word, where
            assert "--requirepass" not in word, (where, word)
            for name in secret_env:
                assert f"$({name})" not in word, (where, word)
    (redis,) = [words for where, words, _ in lines if where.startswith("StatefulSet/")]
    script = redis[2]
    assert "redis-server - " in script and 'requirepass "$REDIS_PASSWORD"' in script  # config on stdin


@pytest.mark.hostile
def test_renders_are_stable_and_pods_only_name_the_redis_secret(chart: Chart) -> None:
    """helm template cannot look up the Secret already in the cluster, so a generated password
    changes at every render; nothing else may change with it (the pods only name the Secret), the
    Secret outlives an uninstall, and a Secret given by name makes the whole output stable."""
    renders = []
    for _ in range(2):
        proc = chart.template("defaults")
        assert proc.returncode == 0, proc.stderr
        renders.append([d for d in yaml.safe_load_all(proc.stdout) if d])
    first, second = renders
    assert _pod_specs(first) == _pod_specs(second)
    secret_name = f"{RELEASE}-redis"
    for docs in renders:
        (secret,) = [d for d in _by_kind(docs, "Secret") if d["metadata"]["name"] == secret_name]
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert set(secret.pop("data")) == {"password"}
    assert first == second  # everything but the generated password
    given = ("--set", "redis.auth.existingSecret=my-redis")
    outputs = {chart.template("defaults", *given).stdout for _ in range(2)}
    assert len(outputs) == 1
    docs = [d for d in yaml.safe_load_all(outputs.pop()) if d]
    assert secret_name not in {d["metadata"]["name"] for d in _by_kind(docs, "Secret")}
    refs = {
        json.dumps(e["valueFrom"]["secretKeyRef"], sort_keys=True)
        for _, pod, _ in _pod_specs(docs)
        for container in pod["containers"]
        for e in container.get("env", [])
        if e["name"] == "REDIS_PASSWORD"
    }
    assert refs == {json.dumps({"key": "password", "name": "my-redis"}, sort_keys=True)}


@pytest.mark.parametrize("grace", [None, 600])
def test_every_ray_pod_gives_a_stopping_run_time_for_its_final_checkpoint(
    chart: Chart, grace: int | None
) -> None:
    """Kubernetes' SIGKILL (30 s after SIGTERM by default) and `ray job stop`'s (3 s) both wait the
    chart's grace, so the run finishes its step and writes its checkpoint; a retry then resumes."""
    docs = chart.render("laptop", *([] if grace is None else ["--set", f"stopGraceSeconds={grace}"]))
    expected = grace or 120
    pods = 0
    for doc in docs:
        if doc["kind"] not in RAY_KINDS:
            continue
        for name, group in _groups(doc):
            assert group["template"]["spec"]["terminationGracePeriodSeconds"] == expected, (doc["kind"], name)
            assert _env(_ray_container(group))["RAY_JOB_STOP_WAIT_TIME_S"] == str(expected), (
                doc["kind"],
                name,
            )
            pods += 1
    assert pods >= 2
    job = _one(docs, "RayJob")
    assert job["spec"]["backoffLimit"] == 2 and "--resume auto" in job["spec"]["entrypoint"]
