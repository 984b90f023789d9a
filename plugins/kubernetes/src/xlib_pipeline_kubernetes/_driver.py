"""The driver (a ``Job``, or a ``CronJob`` with a schedule), its state volume and TLS.

The driver runs ``xlib-pipeline run TARGET --executor dask`` once per run: the scheduler
loop, hooks, audit and the run store live there, task bodies run on the Dask workers. Its
state (audit trail, SQLite store, local blob store) is on a PersistentVolumeClaim, never an
``emptyDir`` that a pod restart would wipe; with ``store_secret`` the run store is the
PostgreSQL database named by that Secret. TLS between the Dask scheduler, the workers and
the driver comes from a cert-manager ``Certificate`` (or a ``kubernetes.io/tls`` Secret the
user provides) mounted into every pod.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from ._manifests import (
    CONFIG_FILE,
    CONFIG_MOUNT,
    DASK_COMM_PORT,
    DASK_WORKER_PORT,
    HOME_MOUNT,
    Names,
    _container_security,
    _dns_egress,
    _meta,
    _pod_security,
    _resources,
)
from ._settings import KubernetesSettings

#: Where the TLS Secret is mounted in every pod.
TLS_MOUNT = "/etc/xlib-pipeline-tls"
#: Where the image keeps the pipeline files (see the Dockerfile).
APP_DIR = "/app"
JOB_TTL_SECONDS = 7 * 86400


def driver_target(cli_target: str | None, s: KubernetesSettings, pipeline: str) -> str:
    """What the driver runs: ``kubernetes.target``, else the rendered ``FILE[:NAME]`` found
    under /app in the image (the Dockerfile copies the pipeline files there)."""
    if s.target:
        return s.target
    if cli_target:
        file, sep, name = cli_target.partition(":")
        return f"{APP_DIR}/{PurePosixPath(file).name}{sep}{name}"
    return f"{APP_DIR}/pipeline.py:{pipeline}"


def tls_secret_name(app: str, s: KubernetesSettings) -> str | None:
    """The Secret holding ``tls.crt``/``tls.key``/``ca.crt``, or ``None`` without TLS."""
    if s.tls is None:
        return None
    return s.tls["secret"] if s.tls["mode"] == "secret" else f"{app}-dask-tls"


def tls_env() -> list[dict[str, Any]]:
    """Dask's TLS config as environment variables (one certificate for every role)."""
    cert, key, ca = f"{TLS_MOUNT}/tls.crt", f"{TLS_MOUNT}/tls.key", f"{TLS_MOUNT}/ca.crt"
    env = [
        ("DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", "True"),
        ("DASK_DISTRIBUTED__COMM__TLS__CA_FILE", ca),
    ]
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        env.append((f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT", cert))
        env.append((f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY", key))
    return [{"name": k, "value": v} for k, v in env]


def tls_volume(secret: str) -> dict[str, Any]:
    """The TLS Secret as a read-only volume (owner-only file mode)."""
    return {"name": "tls", "secret": {"secretName": secret, "defaultMode": 0o400}}


TLS_VOLUME_MOUNT = {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}


def client_security() -> dict[str, Any]:
    """The dask plugin's ``distributed.security`` section for the driver's client."""
    return {
        "tls_ca_file": f"{TLS_MOUNT}/ca.crt",
        "tls_client_cert": f"{TLS_MOUNT}/tls.crt",
        "tls_client_key": f"{TLS_MOUNT}/tls.key",
        "require_encryption": True,
    }


def certificates(names: Names, ns: str, app: str, s: KubernetesSettings) -> list[dict[str, Any]]:
    """cert-manager objects: the Dask certificate, and a self-signed CA when no issuer is
    given (a bootstrap Issuer, the CA Certificate and the CA Issuer that signs)."""
    if s.tls is None or s.tls["mode"] != "cert-manager":
        return []
    labels = names.labels("tls")
    objs: list[dict[str, Any]] = []
    issuer = s.tls.get("issuer")
    kind = s.tls.get("issuer_kind", "Issuer")
    if issuer is None:
        boot, ca = f"{app}-dask-selfsigned", f"{app}-dask-ca"
        objs.append(_issuer(boot, ns, labels, {"selfSigned": {}}))
        objs.append(
            _certificate(
                ca,
                ns,
                labels,
                {"name": boot, "kind": "Issuer"},
                {"isCA": True, "commonName": ca, "duration": "87600h"},
            )
        )
        objs.append(_issuer(ca, ns, labels, {"ca": {"secretName": ca}}))
        issuer, kind = ca, "Issuer"
    sched = f"{app}-dask-scheduler"
    dns = [sched, f"{sched}.{ns}", f"{sched}.{ns}.svc", f"{sched}.{ns}.svc.cluster.local"]
    dns += [f"{app}-worker", f"{app}-worker.{ns}.svc", f"*.{ns}.pod"]
    objs.append(
        _certificate(
            f"{app}-dask-tls",
            ns,
            labels,
            {"name": issuer, "kind": kind},
            {
                "commonName": f"{sched}.{ns}.svc",
                "dnsNames": dns,
                "duration": "2160h",
                "renewBefore": "360h",
                "usages": ["server auth", "client auth", "digital signature", "key encipherment"],
            },
        )
    )
    return objs


def _issuer(name: str, ns: str, labels: Any, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Issuer",
        "metadata": _meta(name, ns, labels),
        "spec": spec,
    }


def _certificate(
    name: str, ns: str, labels: Any, issuer: dict[str, str], extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": _meta(name, ns, labels),
        "spec": {
            "secretName": name,
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": {**issuer, "group": "cert-manager.io"},
            **extra,
        },
    }


def state_claim(names: Names, ns: str, name: str, s: KubernetesSettings) -> dict[str, Any]:
    """The driver's state volume: audit trail, SQLite store, local blob store."""
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": s.state_size}},
    }
    if s.storage_class:
        spec["storageClassName"] = s.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(name, ns, names.labels("state")),
        "spec": spec,
    }


def driver(
    names: Names,
    ns: str,
    app: str,
    s: KubernetesSettings,
    *,
    target: str,
    config_map: str,
    service_account: str,
    dask_address: str,
    claim: str,
    tls_secret: str | None,
) -> list[dict[str, Any]]:
    """The driver Job (or CronJob) and its NetworkPolicy."""
    name = f"{app}-driver"
    labels = names.labels("driver")
    command = [
        "xlib-pipeline",
        "run",
        target,
        "--config",
        f"{CONFIG_MOUNT}/{CONFIG_FILE}",
        "--executor",
        "dask",
        "--no-monitor",
    ]
    env: list[dict[str, Any]] = [
        {"name": "XLIB_PIPELINE_HOME", "value": HOME_MOUNT},
        {"name": "XLIB_PIPELINE_CONFIG", "value": f"{CONFIG_MOUNT}/{CONFIG_FILE}"},
        {"name": "XLIB_PIPELINE_DASK_ADDRESS", "value": dask_address},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if s.store_secret is not None:
        ref = {"name": s.store_secret["secret"], "key": s.store_secret["key"]}
        env.append({"name": "XLIB_PIPELINE_STORE_URL", "valueFrom": {"secretKeyRef": ref}})
        command += ["--store", "$(XLIB_PIPELINE_STORE_URL)"]  # expanded by the kubelet
    for key, value in sorted(s.env.items()):
        env.append({"name": key, "value": str(value)})
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
        {"name": "state", "mountPath": HOME_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map}},
        {"name": "state", "persistentVolumeClaim": {"claimName": claim}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},  # scratch
    ]
    if tls_secret is not None:
        env.extend(tls_env())
        mounts.append(TLS_VOLUME_MOUNT)
        volumes.append(tls_volume(tls_secret))
    pod = {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Never",
            "securityContext": _pod_security(s),
            "containers": [
                {
                    "name": "driver",
                    "image": s.image,
                    "imagePullPolicy": s.image_pull_policy,
                    "command": command,
                    "env": env,
                    "resources": _resources(s),
                    "securityContext": _container_security(s),
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }
    job: dict[str, Any] = {"backoffLimit": s.driver_backoff_limit, "template": pod}
    if s.driver_deadline_seconds is not None:
        job["activeDeadlineSeconds"] = s.driver_deadline_seconds
    if s.schedule is None:
        job["ttlSecondsAfterFinished"] = JOB_TTL_SECONDS
        workload: dict[str, Any] = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _meta(name, ns, labels),
            "spec": job,
        }
    else:
        cron: dict[str, Any] = {
            "schedule": s.schedule,
            # one run at a time: the state volume is ReadWriteOnce and a run resumes the last
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 5,
            "jobTemplate": {"metadata": {"labels": dict(labels)}, "spec": job},
        }
        if s.time_zone:
            cron["timeZone"] = s.time_zone
        workload = {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": _meta(name, ns, labels),
            "spec": cron,
        }
    same_app = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": names.instance}}}
    egress: list[dict[str, Any]] = [
        _dns_egress(),
        {
            "to": [same_app],
            "ports": [
                {"protocol": "TCP", "port": DASK_COMM_PORT},
                {"protocol": "TCP", "port": DASK_WORKER_PORT},
            ],
        },
    ]
    if s.egress_cidrs:  # the PostgreSQL store, object storage, lineage endpoints ...
        egress.append({"to": [{"ipBlock": {"cidr": c}} for c in s.egress_cidrs]})
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, ns, labels),
        "spec": {
            "podSelector": {"matchLabels": names.selector("driver")},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }
    return [workload, policy]
