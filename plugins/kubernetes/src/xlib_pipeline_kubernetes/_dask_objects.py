"""The Dask scheduler's objects for ``render kubernetes --executor dask``: its Deployment,
Service and NetworkPolicy, wired to the worker pods rendered by :mod:`._manifests`."""

from __future__ import annotations

from typing import Any

from ._manifests import (
    DASK_COMM_PORT,
    DASK_DASHBOARD_PORT,
    DASK_WORKER_PORT,
    HEALTH_PATH,
    Names,
    _container_security,
    _dns_egress,
    _meta,
    _pod_security,
    _probe,
)
from ._settings import KubernetesSettings


def dask_scheduler(
    names: Names,
    ns: str,
    name: str,
    sa_name: str,
    s: KubernetesSettings,
    tls_secret: str | None = None,
) -> list[dict[str, Any]]:
    from ._driver import TLS_VOLUME_MOUNT, tls_env, tls_volume

    labels = names.labels("dask-scheduler")
    same_app = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": names.instance}}}
    container = {
        "name": "scheduler",
        "image": s.image,
        "imagePullPolicy": s.image_pull_policy,
        "command": [
            "dask",
            "scheduler",
            "--host",
            "0.0.0.0",
            "--port",
            str(DASK_COMM_PORT),
            "--dashboard-address",
            f":{DASK_DASHBOARD_PORT}",
            *(["--protocol", "tls"] if tls_secret else []),
        ],
        "env": [
            {"name": "DASK_TEMPORARY_DIRECTORY", "value": "/tmp"},
            *(tls_env() if tls_secret else []),
        ],
        "ports": [
            {"name": "tcp-comm", "containerPort": DASK_COMM_PORT, "protocol": "TCP"},
            {"name": "http-dashboard", "containerPort": DASK_DASHBOARD_PORT, "protocol": "TCP"},
        ],
        "resources": {
            "requests": dict(s.scheduler_resources["requests"]),
            "limits": dict(s.scheduler_resources["limits"]),
        },
        "readinessProbe": _probe("http-dashboard", HEALTH_PATH, 5, 5, 3),
        "livenessProbe": _probe("http-dashboard", HEALTH_PATH, 30, 10, 3),
        "securityContext": _container_security(s),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            *([TLS_VOLUME_MOUNT] if tls_secret else []),
        ],
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(name, ns, labels),
            "spec": {
                "replicas": 1,
                "revisionHistoryLimit": 5,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": names.selector("dask-scheduler")},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": sa_name,
                        "automountServiceAccountToken": False,
                        "enableServiceLinks": False,
                        "securityContext": _pod_security(s),
                        "containers": [container],
                        "volumes": [
                            # scratch only: the scheduler keeps no state across restarts
                            {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                            *([tls_volume(tls_secret)] if tls_secret else []),
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, ns, labels),
            "spec": {
                "type": "ClusterIP",
                "selector": names.selector("dask-scheduler"),
                "ports": [
                    {
                        "name": "tcp-comm",
                        "port": DASK_COMM_PORT,
                        "targetPort": "tcp-comm",
                        "protocol": "TCP",
                    },
                    {
                        "name": "http-dashboard",
                        "port": DASK_DASHBOARD_PORT,
                        "targetPort": "http-dashboard",
                        "protocol": "TCP",
                    },
                ],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(name, ns, labels),
            "spec": {
                "podSelector": {"matchLabels": names.selector("dask-scheduler")},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [same_app],
                        "ports": [{"protocol": "TCP", "port": DASK_COMM_PORT}],
                    },
                    {
                        "from": [{"podSelector": {}}],
                        "ports": [{"protocol": "TCP", "port": DASK_DASHBOARD_PORT}],
                    },
                ],
                "egress": [
                    _dns_egress(),
                    {
                        "to": [same_app],
                        "ports": [{"protocol": "TCP", "port": DASK_WORKER_PORT}],
                    },
                ],
            },
        },
    ]
