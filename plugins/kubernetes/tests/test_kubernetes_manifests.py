"""Rendered manifests: strict schema validation, labels, probes and security settings."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from xlib_pipeline_kubernetes import (
    HEALTH_PATH,
    KubernetesSettings,
    manifests_yaml,
    render_manifests,
    to_files,
)

from xlib_pipeline import ConfigError, Pipeline, PipelineManager

kv = pytest.importorskip("kubernetes_validate")

RECOMMENDED = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
KINDS = {
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "ConfigMap",
    "ServiceAccount",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "Job",
}


def _versions() -> list[str]:
    """Every Kubernetes minor version kubernetes-validate ships, from 1.29 on."""
    from kubernetes_validate.utils import all_versions

    out = []
    for v in all_versions():
        major, minor = (int(x) for x in v.split(".")[:2])
        mm = f"{major}.{minor}"
        if (major, minor) >= (1, 29) and mm not in out:
            out.append(mm)
    return out


def _pipeline() -> Pipeline:
    p = Pipeline("distributed_etl")
    p.add_task("load", lambda: [1, 2])
    return p


VARIANTS = {
    "threads": {},
    "dask": {"executor": "dask"},
    "fixed": {"auto_scaling": False, "resource_management": "local", "replicas": 3},
    "egress": {"egress_cidrs": ["10.0.0.0/8"], "env": {"LOG_LEVEL": "info"}},
    "scheduled": {"schedule": "0 2 * * *", "time_zone": "UTC", "store_secret": {"secret": "db"}},
    "tls": {"tls": True, "storage_class": "standard", "state_size": "20Gi"},
    "tls-secret": {"tls": {"secret": "dask-tls"}},
    "tls-issuer": {"tls": {"issuer": "corp-ca", "issuer_kind": "ClusterIssuer"}},
}


def _builtin(obj: dict) -> bool:
    """Kinds Kubernetes itself defines (cert-manager's CRDs are checked in test_deploy)."""
    return not obj["apiVersion"].startswith("cert-manager.io/")


def _containers(obj: dict) -> list[dict]:
    if obj["kind"] != "Deployment":
        return []
    return obj["spec"]["template"]["spec"]["containers"]


class TestSchema:
    def test_versions_cover_129_to_latest(self):
        """The validation matrix starts at 1.29 and reaches the newest shipped schema."""
        from kubernetes_validate.utils import latest_version

        versions = _versions()
        assert versions[0] == "1.29"
        assert versions[-1] == ".".join(latest_version().split(".")[:2])

    @pytest.mark.parametrize("variant", sorted(VARIANTS))
    def test_every_manifest_validates_strictly(self, variant):
        """Each object passes strict validation for every version from 1.29 to the newest."""
        objs = render_manifests(_pipeline(), namespace="prod", **VARIANTS[variant])
        kinds = {o["kind"] for o in objs}
        expected = KINDS - ({"HorizontalPodAutoscaler"} if variant == "fixed" else set())
        if variant == "scheduled":
            expected = (expected - {"Job"}) | {"CronJob"}
        assert expected <= kinds
        for version in _versions():
            for obj in objs:
                if _builtin(obj):
                    kv.validate(obj, version, strict=True)

    def test_strict_validation_would_catch_a_typo(self):
        """The validator used here really rejects an unknown field (the test can fail)."""
        obj = render_manifests(_pipeline())[0]
        obj["automountServiceAcountToken"] = False
        with pytest.raises(kv.ValidationError):
            kv.validate(obj, "1.29", strict=True)


class TestContent:
    @pytest.mark.parametrize("variant", sorted(VARIANTS))
    def test_labels_probes_and_security(self, variant):
        """Labels, /health probes and the restrictive securityContext are on every pod."""
        objs = render_manifests(_pipeline(), namespace="prod", **VARIANTS[variant])
        for obj in objs:
            labels = obj["metadata"]["labels"]
            for key in RECOMMENDED:
                assert labels.get(key), (obj["kind"], obj["metadata"]["name"], key)
            assert obj["metadata"]["namespace"] == "prod"
        deployments = [o for o in objs if o["kind"] == "Deployment"]
        assert deployments
        for dep in deployments:
            tpl = dep["spec"]["template"]
            for key in RECOMMENDED:
                assert tpl["metadata"]["labels"].get(key)
            sel = dep["spec"]["selector"]["matchLabels"]
            assert sel.items() <= tpl["metadata"]["labels"].items()
            assert "app.kubernetes.io/version" not in sel
            pod = tpl["spec"]
            assert pod["automountServiceAccountToken"] is False
            psc = pod["securityContext"]
            assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0
            assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["runAsNonRoot"] is True
                assert isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0
                assert sc["readOnlyRootFilesystem"] is True
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"] == {"drop": ["ALL"]}
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
                for probe in ("readinessProbe", "livenessProbe"):
                    assert c[probe]["httpGet"]["path"] == HEALTH_PATH
                assert c["resources"]["requests"]["cpu"]
                assert c["resources"]["requests"]["memory"]
        sa = next(o for o in objs if o["kind"] == "ServiceAccount")
        assert sa["automountServiceAccountToken"] is False

    def test_hpa_targets_and_behavior(self):
        """The HPA scales the worker Deployment on CPU and memory with both behaviors."""
        s = KubernetesSettings().evolve(
            autoscaling={"min_replicas": 3, "max_replicas": 50, "cpu_utilization": 65}
        )
        objs = render_manifests(_pipeline(), settings=s)
        hpa = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")
        dep = next(o for o in objs if o["kind"] == "Deployment")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 50)
        targets = {
            m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
            for m in hpa["spec"]["metrics"]
        }
        assert targets == {"cpu": 65, "memory": 80}
        assert {"scaleUp", "scaleDown"} <= set(hpa["spec"]["behavior"])

    def test_dask_scheduler_and_worker_wiring(self):
        """The workers point at the rendered scheduler Service (always rendered now)."""
        objs = render_manifests(_pipeline(), namespace="data", executor="dask")
        svc = next(
            o
            for o in objs
            if o["kind"] == "Service"
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == "dask-scheduler"
        )
        worker = next(
            o
            for o in objs
            if o["kind"] == "Deployment"
            and o["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
        )
        env = {e["name"]: e.get("value") for e in _containers(worker)[0]["env"]}
        address = env["XLIB_PIPELINE_DASK_ADDRESS"]
        assert address == f"tcp://{svc['metadata']['name']}.data.svc:8786"
        cm = next(o for o in objs if o["kind"] == "ConfigMap")
        assert yaml.safe_load(cm["data"]["config.yaml"])["distributed"]["address"] == address

    def test_config_map_and_limits_by_resource_management(self):
        """The ConfigMap carries the config; resource_management 'local' drops limits."""
        config = {"distributed_mode": True, "cluster_type": "kubernetes", "auto_scaling": True}
        objs = render_manifests(_pipeline(), config=config, resource_management="local")
        cm = next(o for o in objs if o["kind"] == "ConfigMap")
        shipped = yaml.safe_load(cm["data"]["config.yaml"])
        assert shipped["cluster_type"] == "kubernetes" and shipped["distributed_mode"] is True
        dep = next(o for o in objs if o["kind"] == "Deployment")
        assert "limits" not in _containers(dep)[0]["resources"]
        assert any(o["metadata"]["name"].endswith("dask-scheduler") for o in objs)

    def test_yaml_stream_and_kustomize_files(self):
        """YAML output round-trips; the file set has a kustomization listing every file."""
        text = manifests_yaml(_pipeline(), namespace="x")
        docs = [d for d in yaml.safe_load_all(text) if d]
        assert len(docs) == len(render_manifests(_pipeline()))
        files = to_files(render_manifests(_pipeline(), namespace="x"))
        kust = yaml.safe_load(files["kustomization.yaml"])
        assert kust["namespace"] == "x"
        assert sorted(kust["resources"]) == sorted(f for f in files if f != "kustomization.yaml")

    def test_bad_settings_are_refused(self):
        """Invalid values name the key and what was expected."""
        with pytest.raises(ValueError, match="DNS-1123"):
            render_manifests(_pipeline(), namespace="Prod_Env")
        with pytest.raises(ValueError, match="quantity"):
            KubernetesSettings().evolve(resources={"requests": {"cpu": "lots"}})
        with pytest.raises(ConfigError, match="kubernetes"):
            PipelineManager({"kubernetes": {"replica": 3}})


class TestManagerAndCli:
    def test_guide_config_keys_accepted(self, monkeypatch, tmp_path):
        """auto_scaling and resource_management from the guide validate and shape output."""
        monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path))
        pm = PipelineManager({"auto_scaling": False, "resource_management": "kubernetes"})
        plugin = pm.get_plugin("kubernetes")
        objs = plugin.render(_pipeline())
        assert "HorizontalPodAutoscaler" not in {o["kind"] for o in objs}
        with pytest.raises(ConfigError, match="resource_management"):
            PipelineManager({"resource_management": "yarn"})

    def test_cli_render_writes_kustomize_folder(self, tmp_path, monkeypatch, capsys):
        """`xlib-pipeline render kubernetes FILE -o DIR` writes valid files and a kustomization."""
        from xlib_pipeline.cli import main

        pytest.importorskip("xlib_pipeline_dask", reason="distributed_mode needs the dask plugin")
        monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))
        src = tmp_path / "etl.py"
        src.write_text(
            textwrap.dedent(
                """
                from xlib_pipeline import Pipeline
                PIPELINE_CONFIG = {"distributed_mode": True}
                etl = Pipeline("nightly_etl")

                @etl.task("extract")
                def extract():
                    return 1
                """
            )
        )
        out = tmp_path / "k8s"
        argv = ["render", "kubernetes", f"{src}:etl", "--namespace", "data"]
        argv += ["--image", "registry.local/etl:1.2", "--replicas", "4", "-o", str(out)]
        assert main(argv) == 0
        files = {p.name: p.read_text() for p in Path(out).iterdir()}
        assert "kustomization.yaml" in files
        objs = [yaml.safe_load(t) for n, t in files.items() if n != "kustomization.yaml"]
        for obj in objs:
            kv.validate(obj, "1.29", strict=True)
        worker = next(
            o
            for o in objs
            if o["metadata"]["name"] == "nightly-etl-worker" and o["kind"] == "Deployment"
        )
        assert worker["spec"]["replicas"] == 4
        assert _containers(worker)[0]["image"] == "registry.local/etl:1.2"
        assert any(o["metadata"]["name"] == "nightly-etl-dask-scheduler" for o in objs)
        assert main(["render", "kubernetes", str(src), "--namespace", "data"]) == 0
        streamed = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
        assert {d["kind"] for d in streamed} >= KINDS
