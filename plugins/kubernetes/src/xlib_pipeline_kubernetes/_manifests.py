"""Kubernetes manifests for a pipeline: Dask scheduler and workers, and the driver that runs it.

:func:`render_manifests` returns plain dicts; :func:`to_yaml` joins them as a multi-document
YAML stream; :func:`to_files` gives one file per object plus a ``kustomization.yaml``.
Every object carries the recommended ``app.kubernetes.io/*`` labels; pods run as a
non-root user with a read-only root filesystem, no privilege escalation, every capability
dropped, the runtime's default seccomp profile and no service-account token.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from xlib_pipeline import ConfigError

from ._settings import KubernetesSettings

#: The HTTP path of the worker's readiness and liveness probes.
HEALTH_PATH = "/health"
#: The HTTP path of the worker's Prometheus metrics.
METRICS_PATH = "/metrics"
MANAGED_BY = "xlib-pipeline-kubernetes"
PART_OF = "xlib-pipeline"
CONFIG_FILE = "config.yaml"
CONFIG_MOUNT = "/etc/xlib-pipeline"
HOME_MOUNT = "/var/lib/xlib-pipeline"
DASK_COMM_PORT = 8786
DASK_DASHBOARD_PORT = 8787
DASK_WORKER_PORT = 8788

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def slug(name: str, limit: int = 40) -> str:
    """A DNS-1123 label from ``name`` (lowercase alphanumerics and '-')."""
    s = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    s = re.sub(r"-{2,}", "-", s)[:limit].strip("-")
    if not s:
        raise ValueError(f"cannot make a Kubernetes name from {name!r}")
    return s


def pipeline_slug(name: str) -> str:
    """The app name for pipeline ``name``: its slug, or, when nothing of it survives (``---``,
    a name in a non-Latin script), ``pipeline-`` and a digest of the name, so every pipeline
    renders and two such pipelines never share objects."""
    try:
        return slug(name)
    except ValueError:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        return f"pipeline-{digest}"


def _object_name(value: str, key: str) -> str:
    """An explicitly configured name: used as a slug, refused by key when nothing survives."""
    try:
        return slug(value)
    except ValueError:
        raise ConfigError(
            f"kubernetes.{key} {value!r} has no letters or digits to make a Kubernetes name "
            "(DNS-1123: lowercase a-z, 0-9 and '-')",
            key=f"kubernetes.{key}",
        ) from None


def _label(value: str) -> str:
    value = str(value)[:63]
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", value).strip("-_.")
    if not _LABEL_VALUE.match(value):  # pragma: no cover - guarded by the substitution
        raise ValueError(f"invalid label value {value!r}")
    return value


@attrs.frozen(kw_only=True)
class Names:
    """Object names and labels derived from the pipeline."""

    app: str
    instance: str
    version: str

    def labels(self, component: str) -> dict[str, str]:
        """The recommended labels for one component."""
        return {
            "app.kubernetes.io/name": self.app,
            "app.kubernetes.io/instance": self.instance,
            "app.kubernetes.io/version": _label(self.version),
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": PART_OF,
            "app.kubernetes.io/managed-by": MANAGED_BY,
        }

    def selector(self, component: str) -> dict[str, str]:
        """Immutable selector labels (no version: upgrades keep matching)."""
        return {
            "app.kubernetes.io/name": self.app,
            "app.kubernetes.io/instance": self.instance,
            "app.kubernetes.io/component": component,
        }


def _meta(name: str, namespace: str, labels: Mapping[str, str], **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    meta.update({k: v for k, v in extra.items() if v})
    return meta


def _pod_security(s: KubernetesSettings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": s.run_as_user,
        "runAsGroup": s.run_as_user,
        "fsGroup": s.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security(s: KubernetesSettings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": s.run_as_user,
        "runAsGroup": s.run_as_user,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(s: KubernetesSettings) -> dict[str, Any]:
    """Requests always (scheduling, HPA); limits when Kubernetes manages resources."""
    out: dict[str, Any] = {"requests": dict(s.resources["requests"])}
    if s.resource_management == "kubernetes" and s.resources["limits"]:
        out["limits"] = dict(s.resources["limits"])
    return out


def _probe(port: str, path: str, delay: int, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "initialDelaySeconds": delay,
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _plain_config(config: Mapping[str, Any]) -> Any:
    """The config as plain JSON types (paths and other objects become strings)."""
    return json.loads(json.dumps(dict(config), default=str))


def render_manifests(
    pipeline: Any,
    *,
    settings: KubernetesSettings | None = None,
    config: Mapping[str, Any] | None = None,
    executor: str | None = None,
    target: str | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Kubernetes objects running ``pipeline`` on Dask, as plain dicts.

    ``settings`` (or keyword ``options`` overriding its fields: ``namespace``, ``image``,
    ``replicas``, ``schedule``, ``tls`` ...) shape the objects; ``config`` is the manager
    config shipped in the ConfigMap. The objects: a Dask scheduler, worker Deployment
    (``xlib-pipeline worker``), the driver Job (a CronJob with ``schedule``) running
    ``xlib-pipeline run TARGET`` (``target``: the ``FILE[:NAME]`` rendered, found under /app
    in the image) with its state on a PersistentVolumeClaim, and with
    ``tls`` (forced by ``security.encryption_in_transit``) cert-manager objects.
    """
    from . import _driver

    s = settings or KubernetesSettings()
    if options:
        s = s.evolve(**options)
    if (executor or s.executor or "dask") != "dask":
        raise ConfigError(
            f"kubernetes: the rendered workers are Dask workers; executor "
            f"{executor or s.executor!r} cannot run there (use 'dask' or leave it out)",
            key="kubernetes.executor",
        )
    config = dict(config or {})
    security = config.get("security")
    eit = isinstance(security, Mapping) and security.get("encryption_in_transit") is True
    if s.tls is None and eit:  # security.encryption_in_transit forces TLS on the cluster
        s = s.evolve(tls=True)
    name = getattr(pipeline, "name", pipeline)
    if not isinstance(name, str):
        raise TypeError(f"render_manifests expects a Pipeline or a name, got {pipeline!r}")
    app = _object_name(s.name, "name") if s.name else pipeline_slug(name)
    instance = _object_name(s.instance, "instance") if s.instance else app
    names = Names(app=app, instance=instance, version=s.version)
    dask = True  # workers are Dask workers; the driver runs the pipeline against them
    ns = s.namespace
    worker_name = f"{app}-worker"
    sched_name = f"{app}-dask-scheduler"
    sa_name = app
    cm_name = f"{app}-config"
    tls_secret = _driver.tls_secret_name(app, s)
    scheme = "tls" if tls_secret else "tcp"
    dask_address = f"{scheme}://{sched_name}.{ns}.svc:{DASK_COMM_PORT}"
    shipped = _plain_config(config)
    shipped.setdefault("distributed", {})
    if isinstance(shipped["distributed"], dict):
        shipped["distributed"].setdefault("address", dask_address)
        if tls_secret:
            sec = shipped["distributed"].setdefault("security", {})
            for key, value in _driver.client_security().items():
                sec.setdefault(key, value)

    import yaml

    objs: list[dict[str, Any]] = []
    objs.append(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(sa_name, ns, names.labels("worker")),
            "automountServiceAccountToken": False,
        }
    )
    objs.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(cm_name, ns, names.labels("config")),
            "data": {
                CONFIG_FILE: yaml.safe_dump(shipped, sort_keys=True),
                "PIPELINE_NAME": name,
            },
        }
    )

    env: list[dict[str, Any]] = [
        {"name": "PIPELINE_NAME", "value": name},
        {"name": "XLIB_PIPELINE_CONFIG", "value": f"{CONFIG_MOUNT}/{CONFIG_FILE}"},
        # workers keep no state (runs are recorded by the driver): scratch only
        {"name": "XLIB_PIPELINE_HOME", "value": "/tmp/xlib-pipeline"},
        {"name": "DASK_TEMPORARY_DIRECTORY", "value": "/tmp"},
        {"name": "XLIB_PIPELINE_WORKER_PORT", "value": str(s.port)},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    ports: list[dict[str, Any]] = [{"name": "http", "containerPort": s.port, "protocol": "TCP"}]
    if dask:
        env.append({"name": "XLIB_PIPELINE_DASK_ADDRESS", "value": dask_address})
        ports.append({"name": "dask-worker", "containerPort": DASK_WORKER_PORT, "protocol": "TCP"})
    for key, value in sorted(s.env.items()):
        env.append({"name": key, "value": str(value)})
    if tls_secret:
        env.extend(_driver.tls_env())
    command = ["xlib-pipeline", "worker", "--host", "0.0.0.0", "--port", str(s.port)]
    if dask:
        command += ["--dask-port", str(DASK_WORKER_PORT), "--nthreads", str(s.nthreads)]
    worker_labels = names.labels("worker")
    container = {
        "name": "worker",
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "command": command,
        "env": env,
        "ports": ports,
        "resources": _resources(s),
        "startupProbe": _probe("http", HEALTH_PATH, 2, 2, 30),
        "readinessProbe": _probe("http", HEALTH_PATH, 5, 5, 3),
        "livenessProbe": _probe("http", HEALTH_PATH, 30, 10, 3),
        "securityContext": _container_security(s),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *([_driver.TLS_VOLUME_MOUNT] if tls_secret else []),
        ],
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": sa_name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": s.termination_grace_seconds,
        "securityContext": _pod_security(s),
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": cm_name}},
            # scratch (Dask spill files): no state lives on a worker
            {"name": "tmp", "emptyDir": {"sizeLimit": s.scratch_size}},
            *([_driver.tls_volume(tls_secret)] if tls_secret else []),
        ],
    }
    objs.append(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(worker_name, ns, worker_labels),
            "spec": {
                "replicas": s.replicas,
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": names.selector("worker")},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "template": {
                    "metadata": {
                        "labels": worker_labels,
                        "annotations": {
                            "prometheus.io/scrape": "true",
                            "prometheus.io/port": str(s.port),
                            "prometheus.io/path": METRICS_PATH,
                        },
                    },
                    "spec": pod_spec,
                },
            },
        }
    )
    objs.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(worker_name, ns, worker_labels),
            "spec": {
                "type": "ClusterIP",
                "selector": names.selector("worker"),
                "ports": [
                    {
                        "name": "http",
                        "port": s.service_port,
                        "targetPort": "http",
                        "protocol": "TCP",
                    }
                ],
            },
        }
    )
    if s.auto_scaling:
        objs.append(_hpa(names, ns, worker_name, s))
    objs.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(worker_name, ns, worker_labels),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": names.selector("worker")},
            },
        }
    )
    objs.append(_worker_policy(names, ns, worker_name, s, dask))
    from ._dask_objects import dask_scheduler

    objs.extend(dask_scheduler(names, ns, sched_name, sa_name, s, tls_secret))
    claim = f"{app}-state"
    objs.append(_driver.state_claim(names, ns, claim, s))
    objs.extend(
        _driver.driver(
            names,
            ns,
            app,
            s,
            target=_driver.driver_target(target, s, name),
            config_map=cm_name,
            service_account=sa_name,
            dask_address=dask_address,
            claim=claim,
            tls_secret=tls_secret,
        )
    )
    objs.extend(_driver.certificates(names, ns, app, s))
    return objs


def _hpa(names: Names, ns: str, target: str, s: KubernetesSettings) -> dict[str, Any]:
    a = s.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(target, ns, names.labels("worker")),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": a["min_replicas"],
            "maxReplicas": a["max_replicas"],
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": res,
                        "target": {"type": "Utilization", "averageUtilization": a[key]},
                    },
                }
                for res, key in (("cpu", "cpu_utilization"), ("memory", "memory_utilization"))
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 60,
                    "selectPolicy": "Max",
                    "policies": [
                        {"type": "Percent", "value": 100, "periodSeconds": 60},
                        {"type": "Pods", "value": 4, "periodSeconds": 60},
                    ],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "selectPolicy": "Min",
                    "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}],
                },
            },
        },
    }


def _dns_egress() -> dict[str, Any]:
    return {
        "to": [
            {
                "namespaceSelector": {},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def _worker_policy(
    names: Names, ns: str, name: str, s: KubernetesSettings, dask: bool
) -> dict[str, Any]:
    same_app = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": names.instance}}}
    ingress: list[dict[str, Any]] = [
        {
            # health checks come from the kubelet (not subject to policies); /metrics and the
            # service port are reachable from pods of this namespace only
            "from": [{"podSelector": {}}],
            "ports": [{"protocol": "TCP", "port": s.port}],
        }
    ]
    egress: list[dict[str, Any]] = [_dns_egress()]
    if dask:
        ingress.append(
            {"from": [same_app], "ports": [{"protocol": "TCP", "port": DASK_WORKER_PORT}]}
        )
        egress.append(
            {
                "to": [same_app],
                "ports": [
                    {"protocol": "TCP", "port": DASK_COMM_PORT},
                    {"protocol": "TCP", "port": DASK_WORKER_PORT},
                ],
            }
        )
    if s.egress_cidrs:
        egress.append({"to": [{"ipBlock": {"cidr": c}} for c in s.egress_cidrs]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, ns, names.labels("worker")),
        "spec": {
            "podSelector": {"matchLabels": names.selector("worker")},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def to_yaml(objs: Sequence[Mapping[str, Any]]) -> str:
    """A multi-document YAML stream (``---`` between objects)."""
    import yaml

    text: str = yaml.safe_dump_all([dict(o) for o in objs], sort_keys=False, explicit_start=True)
    return text


def file_name(obj: Mapping[str, Any]) -> str:
    """``<kind>-<name>.yaml`` in lowercase."""
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def to_files(objs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """One YAML file per object plus a ``kustomization.yaml`` listing them."""
    import yaml

    files: dict[str, str] = {}
    for o in objs:
        files[file_name(o)] = yaml.safe_dump(dict(o), sort_keys=False)
    namespace = objs[0]["metadata"]["namespace"] if objs else "default"
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": list(files),
    }
    files["kustomization.yaml"] = yaml.safe_dump(kustomization, sort_keys=False)
    return files
