"""The production deployment: driver Job/CronJob, state volume, TLS, and the Dockerfile."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from xlib_pipeline_kubernetes import render_manifests

from xlib_pipeline import ConfigError, Pipeline

kv = pytest.importorskip("kubernetes_validate")
ROOT = Path(__file__).resolve().parents[3]
HOME = "/var/lib/xlib-pipeline"


def _pipeline() -> Pipeline:
    p = Pipeline("nightly_etl")
    p.add_task("load", lambda: [1, 2])
    return p


def _one(objs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and (
            component is None or o["metadata"]["labels"]["app.kubernetes.io/component"] == component
        )
    ]
    assert len(found) == 1, (kind, component, [o["metadata"]["name"] for o in found])
    return found[0]


def _pods(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for o in objs:
        spec = o.get("spec", {})
        if o["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            out.append((o["metadata"]["name"], spec["template"]["spec"]))
    return out


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


class TestDriver:
    def test_job_runs_the_rendered_file_on_dask(self):
        objs = render_manifests(_pipeline(), namespace="data", target="flows/etl.py:etl")
        job = _one(objs, "Job", "driver")
        pod = job["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["command"][:3] == ["xlib-pipeline", "run", "/app/etl.py:etl"]
        assert c["command"][c["command"].index("--executor") + 1] == "dask"
        assert "--no-monitor" in c["command"]
        assert pod["restartPolicy"] == "Never"
        assert job["spec"]["backoffLimit"] == 2 and job["spec"]["ttlSecondsAfterFinished"] > 0
        env = _env(c)
        sched = _one(objs, "Service", "dask-scheduler")["metadata"]["name"]
        assert env["XLIB_PIPELINE_DASK_ADDRESS"] == f"tcp://{sched}.data.svc:8786"
        assert env["XLIB_PIPELINE_HOME"] == HOME
        cm = _one(objs, "ConfigMap")
        shipped = yaml.safe_load(cm["data"]["config.yaml"])
        assert shipped["distributed"]["address"] == env["XLIB_PIPELINE_DASK_ADDRESS"]
        assert "--store" not in c["command"]  # no store secret: SQLite on the state volume

    def test_cronjob_with_schedule_and_postgresql_store(self):
        objs = render_manifests(
            _pipeline(),
            schedule="30 1 * * *",
            time_zone="Europe/Paris",
            store_secret={"secret": "pipeline-db", "key": "dsn"},
        )
        assert not [o for o in objs if o["kind"] == "Job"]
        cron = _one(objs, "CronJob", "driver")
        spec = cron["spec"]
        assert spec["schedule"] == "30 1 * * *" and spec["timeZone"] == "Europe/Paris"
        assert spec["concurrencyPolicy"] == "Forbid"
        (c,) = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        i = c["command"].index("--store")
        assert c["command"][i + 1] == "$(XLIB_PIPELINE_STORE_URL)"  # the kubelet expands it
        ref = _env(c)["XLIB_PIPELINE_STORE_URL"]["secretKeyRef"]
        assert ref == {"name": "pipeline-db", "key": "dsn"}
        for obj in objs:
            if not obj["apiVersion"].startswith("cert-manager"):
                kv.validate(obj, "1.29", strict=True)

    def test_bad_driver_settings_are_refused(self):
        with pytest.raises(ValueError, match="cron expression"):
            render_manifests(_pipeline(), schedule="every night")
        with pytest.raises(ValueError, match=r"store_secret\.secret"):
            render_manifests(_pipeline(), store_secret={"secret": "Bad_Name"})
        with pytest.raises(ValueError, match="state_size"):
            render_manifests(_pipeline(), state_size="lots")
        with pytest.raises(ConfigError, match="Dask workers"):
            render_manifests(_pipeline(), executor="threads")


class TestState:
    @pytest.mark.parametrize("options", [{}, {"schedule": "@daily"}, {"tls": True}])
    def test_state_is_on_a_claim_never_an_emptydir(self, options):
        """Whatever holds state (XLIB_PIPELINE_HOME of the driver) is a PVC; emptyDir
        volumes are mounted only as scratch (/tmp)."""
        objs = render_manifests(_pipeline(), **options)
        claim = _one(objs, "PersistentVolumeClaim", "state")
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
        for name, pod in _pods(objs):
            volumes = {v["name"]: v for v in pod["volumes"]}
            for c in pod["containers"]:
                for m in c.get("volumeMounts", []):
                    vol = volumes[m["name"]]
                    if "emptyDir" in vol:
                        assert m["mountPath"] == "/tmp", (name, m)
                env = _env(c)
                if "XLIB_PIPELINE_HOME" in env and not env["XLIB_PIPELINE_HOME"].startswith("/tmp"):
                    home = next(m for m in c["volumeMounts"] if m["mountPath"] == HOME)
                    claim_ref = volumes[home["name"]]["persistentVolumeClaim"]["claimName"]
                    assert claim_ref == claim["metadata"]["name"]


class TestTLS:
    def test_encryption_in_transit_forces_tls_everywhere(self):
        config = {"security": {"encryption_in_transit": True}}
        objs = render_manifests(_pipeline(), namespace="data", config=config)
        cert = next(o for o in objs if o["kind"] == "Certificate" and "isCA" not in o["spec"])
        secret = cert["spec"]["secretName"]
        sched = _one(objs, "Deployment", "dask-scheduler")
        assert sched["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == [
            "--protocol",
            "tls",
        ]
        for name, pod in _pods(objs):
            (c,) = pod["containers"]
            env = _env(c)
            assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True", name
            tls = next(v for v in pod["volumes"] if v["name"] == "tls")
            assert tls["secret"]["secretName"] == secret, name
            if "XLIB_PIPELINE_DASK_ADDRESS" in env:
                assert env["XLIB_PIPELINE_DASK_ADDRESS"].startswith("tls://"), name
        shipped = yaml.safe_load(_one(objs, "ConfigMap")["data"]["config.yaml"])
        assert shipped["distributed"]["address"].startswith("tls://")
        assert shipped["distributed"]["security"]["require_encryption"] is True
        assert "data" in " ".join(cert["spec"]["dnsNames"])

    def test_self_signed_chain_or_given_issuer(self):
        objs = render_manifests(_pipeline(), tls=True)
        kinds = [o["kind"] for o in objs if o["apiVersion"] == "cert-manager.io/v1"]
        assert sorted(kinds) == ["Certificate", "Certificate", "Issuer", "Issuer"]
        objs = render_manifests(_pipeline(), tls={"issuer": "corp", "issuer_kind": "ClusterIssuer"})
        (cert,) = [o for o in objs if o["apiVersion"] == "cert-manager.io/v1"]
        assert cert["spec"]["issuerRef"] == {
            "name": "corp",
            "kind": "ClusterIssuer",
            "group": "cert-manager.io",
        }
        objs = render_manifests(_pipeline(), tls={"secret": "my-tls"})
        assert not [o for o in objs if o["apiVersion"] == "cert-manager.io/v1"]
        for _, pod in _pods(objs):
            assert {"name": "tls", "secret": {"secretName": "my-tls", "defaultMode": 0o400}} in (
                pod["volumes"]
            )
        with pytest.raises(ValueError, match="either secret or issuer"):
            render_manifests(_pipeline(), tls={"secret": "a", "issuer": "b"})

    @pytest.mark.parametrize("tls", [True, {"issuer": "corp"}])
    def test_cert_manager_objects_have_the_fields_cert_manager_requires(self, tls):
        """kubernetes-validate knows no CRDs: check cert-manager v1's required fields."""
        for o in render_manifests(_pipeline(), tls=tls):
            if o["apiVersion"] != "cert-manager.io/v1":
                continue
            assert set(o) == {"apiVersion", "kind", "metadata", "spec"}
            assert re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", o["metadata"]["name"])
            spec = o["spec"]
            if o["kind"] == "Issuer":
                assert len(set(spec) & {"selfSigned", "ca", "acme", "vault", "venafi"}) == 1
                if "ca" in spec:
                    assert spec["ca"]["secretName"]
            else:
                assert spec["secretName"] and spec["issuerRef"]["name"]
                assert spec.get("dnsNames") or spec.get("commonName")
                assert spec["privateKey"]["algorithm"] in ("RSA", "ECDSA", "Ed25519")
                for usage in spec.get("usages", []):
                    assert usage in {
                        "server auth",
                        "client auth",
                        "digital signature",
                        "key encipherment",
                    }


@pytest.fixture(scope="module")
def stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions, stage by stage (comments dropped)."""
    dfp = pytest.importorskip("dockerfile_parse")
    parser = dfp.DockerfileParser(path=str(ROOT / "Dockerfile"))
    out: list[list[dict[str, Any]]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if ins["instruction"] != "COMMENT":
            assert out, "an instruction before the first FROM"
            out[-1].append(ins)
    return out


class TestDockerfile:
    """The image the manifests name, linted by parsing (hadolint is not on this machine)."""

    def test_multi_stage_with_pinned_bases(self, stages):
        assert len(stages) >= 2
        for stage in stages:
            base = stage[0]["value"].split()[0]
            assert "@sha256:" in base or re.search(r":\d+\.\d+\.\d+[-\w.]*$", base), base
            assert not base.endswith(":latest")

    def test_final_stage_is_non_root_without_build_tools(self, stages):
        final = stages[-1]
        users = [i["value"].split(":")[0] for i in final if i["instruction"] == "USER"]
        assert users and users[-1] not in ("root", "0")
        assert int(users[-1]) >= 1000
        runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
        for tool in ("apt-get install", "apk add", "gcc", "build-essential", "make ", "pip "):
            assert tool not in runs, tool
        copies = [i["value"] for i in final if i["instruction"] == "COPY"]
        assert any(c.startswith("--from=build /opt/venv") for c in copies)

    def test_image_serves_what_the_manifests_expect(self, stages):
        from xlib_pipeline_kubernetes import KubernetesSettings

        final = stages[-1]
        text = " ".join(f"{i['instruction']} {i['value']}" for i in final)
        s = KubernetesSettings()
        assert s.image.rsplit(":", 1)[1] in text  # the version label matches the image tag
        exposed = {p for i in final if i["instruction"] == "EXPOSE" for p in i["value"].split()}
        assert {str(s.port), "8786", "8788"} <= exposed
        assert f"useradd --system --uid {s.run_as_user}" in text
        assert "WORKDIR /app" in text  # where the driver finds the rendered FILE
        build = " ".join(i["value"] for i in stages[0])
        assert "./plugins/*/" in build  # every plugin distribution is in the image
        assert (ROOT / ".dockerignore").read_text().count(".nox") == 1
