"""The ``kubernetes`` config section, validated into :class:`KubernetesSettings`."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import attrs

from xlib_pipeline import check_keys, one_of

VERSION = "0.1.0"
DEFAULT_IMAGE = f"ghcr.io/xlib/xlib-pipeline-worker:{VERSION}"
RESOURCE_MANAGEMENT = ("kubernetes", "local")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
_DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _resources(name: str, value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping) or not set(value) <= {"requests", "limits"}:
        raise ValueError(
            f"kubernetes.{name} must look like {{'requests': {{'cpu': '500m', 'memory': '1Gi'}}, "
            f"'limits': {{...}}}}, got {value!r}"
        )
    out: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for part in ("requests", "limits"):
        for res, qty in (value.get(part) or {}).items():
            if res not in ("cpu", "memory", "ephemeral-storage"):
                raise ValueError(f"kubernetes.{name}.{part}: unknown resource {res!r}")
            text = str(qty)
            if not _QUANTITY.match(text):
                raise ValueError(
                    f"kubernetes.{name}.{part}.{res}: {qty!r} is not a Kubernetes quantity "
                    "(e.g. '500m', '2', '1Gi')"
                )
            out[part][res] = text
    return out


def _autoscaling(value: Any) -> dict[str, int]:
    defaults = {
        "min_replicas": 2,
        "max_replicas": 20,
        "cpu_utilization": 70,
        "memory_utilization": 80,
    }
    if not isinstance(value, Mapping):
        raise ValueError(f"kubernetes.autoscaling must be a mapping, got {value!r}")
    unknown = sorted(set(value) - set(defaults))
    if unknown:
        raise ValueError(
            f"kubernetes.autoscaling: unknown key(s) {unknown}; expected some of {sorted(defaults)}"
        )
    out = {**defaults, **value}
    for key, v in out.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"kubernetes.autoscaling.{key} must be a positive integer, got {v!r}")
    if out["min_replicas"] > out["max_replicas"]:
        raise ValueError(
            f"kubernetes.autoscaling: min_replicas {out['min_replicas']} > "
            f"max_replicas {out['max_replicas']}"
        )
    return out


_DEFAULT_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"cpu": "2", "memory": "4Gi"},
}
_DEFAULT_SCHED_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}


@attrs.frozen(kw_only=True)
class KubernetesSettings:
    """Everything :func:`render_manifests` needs; every field has a safe default."""

    namespace: str = "default"
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    replicas: int = 2
    name: str | None = None
    instance: str | None = None
    version: str = VERSION
    executor: str | None = None
    nthreads: int = 1
    port: int = 8080
    service_port: int = 80
    run_as_user: int = 10001
    auto_scaling: bool = True
    resource_management: str = "kubernetes"
    resources: Mapping[str, Mapping[str, str]] = attrs.field(factory=lambda: _DEFAULT_RESOURCES)
    scheduler_resources: Mapping[str, Mapping[str, str]] = attrs.field(
        factory=lambda: _DEFAULT_SCHED_RESOURCES
    )
    autoscaling: Mapping[str, int] = attrs.field(factory=lambda: _autoscaling({}))
    egress_cidrs: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict)
    termination_grace_seconds: int = 60
    #: The driver: ``xlib-pipeline run TARGET`` in a Job, or a CronJob on this schedule.
    target: str | None = None
    schedule: str | None = None
    time_zone: str | None = None
    driver_backoff_limit: int = 2
    driver_deadline_seconds: int | None = None
    #: ``{"secret": NAME, "key": KEY}``: the run store URL (``postgresql://...``).
    store_secret: Mapping[str, str] | None = None
    #: The driver's state volume (audit trail, SQLite store, local blob store).
    state_size: str = "10Gi"
    #: Scratch space of a worker (Dask spill files), an emptyDir: never state.
    scratch_size: str = "1Gi"
    storage_class: str | None = None
    #: TLS between Dask scheduler, workers and driver: ``{"issuer": NAME, "issuer_kind":
    #: "Issuer" | "ClusterIssuer"}`` (cert-manager; no issuer: a self-signed CA is
    #: rendered) or ``{"secret": NAME}`` (a kubernetes.io/tls Secret with ca.crt).
    tls: Mapping[str, str] | None = None

    def evolve(self, **changes: Any) -> KubernetesSettings:
        """A copy with ``changes`` validated like the config section (``None`` is ignored)."""
        merged = {k: v for k, v in changes.items() if v is not None}
        if not merged:
            return self
        return section({**self.as_mapping(), **merged})

    def as_mapping(self) -> dict[str, Any]:
        """The settings as a plain mapping (the config section's form)."""
        return attrs.asdict(self, recurse=False)


def _positive(name: str, value: Any, *, zero: bool = False) -> int:
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"kubernetes.{name} must be an integer >= {low}, got {value!r}")
    return value


def section(value: Any) -> KubernetesSettings:
    """Convert the ``kubernetes`` config section (a mapping) to :class:`KubernetesSettings`."""
    if isinstance(value, KubernetesSettings):
        return value
    fields = sorted(f.name for f in attrs.fields(KubernetesSettings))
    value = check_keys(value, fields, example="{'namespace': 'pipelines', 'image': '...'}")
    kw: dict[str, Any] = {}
    for key, v in value.items():
        if v is None:
            continue
        if key in ("namespace", "name", "instance"):
            if not isinstance(v, str) or not _DNS.match(v) or len(v) > 63:
                raise ValueError(
                    f"kubernetes.{key} must be a DNS-1123 label (lowercase letters, digits, '-'), "
                    f"got {v!r}"
                )
            kw[key] = v
        elif key in ("image", "version"):
            if not isinstance(v, str) or not v.strip() or any(c.isspace() for c in v):
                raise ValueError(f"kubernetes.{key} must be a non-empty string, got {v!r}")
            kw[key] = v
        elif key == "image_pull_policy":
            if v not in PULL_POLICIES:
                raise ValueError(f"kubernetes.image_pull_policy must be one of {PULL_POLICIES}")
            kw[key] = v
        elif key == "executor":
            if not isinstance(v, str):
                raise ValueError(f"kubernetes.executor must be an executor name, got {v!r}")
            kw[key] = v
        elif key in ("replicas", "termination_grace_seconds"):
            kw[key] = _positive(key, v, zero=True)
        elif key in ("nthreads", "run_as_user"):
            kw[key] = _positive(key, v)
        elif key in ("port", "service_port"):
            kw[key] = _positive(key, v)
            if kw[key] > 65535:
                raise ValueError(f"kubernetes.{key} must be a TCP port, got {v!r}")
        elif key == "auto_scaling":
            if not isinstance(v, bool):
                raise ValueError(f"kubernetes.auto_scaling must be true or false, got {v!r}")
            kw[key] = v
        elif key == "resource_management":
            kw[key] = resource_management(v)
        elif key in ("resources", "scheduler_resources"):
            kw[key] = _resources(key, v)
        elif key == "autoscaling":
            kw[key] = _autoscaling(v)
        elif key == "egress_cidrs":
            if isinstance(v, str):
                v = [v]
            cidrs = []
            for c in v:
                try:
                    cidrs.append(str(ipaddress.ip_network(c, strict=False)))
                except ValueError as exc:
                    raise ValueError(f"kubernetes.egress_cidrs: {c!r} is not a CIDR") from exc
            kw[key] = tuple(cidrs)
        elif key in ("target", "schedule", "time_zone", "storage_class"):
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"kubernetes.{key} must be a non-empty string, got {v!r}")
            if key == "schedule" and len(v.split()) != 5 and not v.startswith("@"):
                raise ValueError(
                    f"kubernetes.schedule must be a cron expression of 5 fields "
                    f"('0 2 * * *') or a macro ('@daily'), got {v!r}"
                )
            kw[key] = v
        elif key == "driver_backoff_limit":
            kw[key] = _positive(key, v, zero=True)
        elif key == "driver_deadline_seconds":
            kw[key] = _positive(key, v)
        elif key in ("state_size", "scratch_size"):
            if not isinstance(v, str) or not _QUANTITY.match(v):
                raise ValueError(f"kubernetes.{key} must be a quantity ('10Gi'), got {v!r}")
            kw[key] = v
        elif key == "store_secret":
            kw[key] = _secret_ref(v)
        elif key == "tls":
            kw[key] = _tls(v)
        elif key == "env":
            if not isinstance(v, Mapping) or not all(
                isinstance(k, str) and _ENV_NAME.match(k) for k in v
            ):
                raise ValueError(f"kubernetes.env must map variable names to values, got {v!r}")
            kw[key] = {k: str(x) for k, x in v.items()}
    return KubernetesSettings(**kw)


def _secret_ref(value: Any) -> dict[str, str]:
    if isinstance(value, str):
        value = {"secret": value}
    value = check_keys(value, ["key", "secret"], example="{'secret': 'pipeline-db', 'key': 'url'}")
    name = value.get("secret")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
        raise ValueError(f"kubernetes.store_secret.secret must name a Secret, got {name!r}")
    key = value.get("key", "url")
    if not isinstance(key, str) or not key:
        raise ValueError(f"kubernetes.store_secret.key must be a key of the Secret, got {key!r}")
    return {"secret": name, "key": key}


def _tls(value: Any) -> dict[str, str]:
    if value is True:
        return {"mode": "cert-manager"}
    value = check_keys(
        value, ["issuer", "issuer_kind", "mode", "secret"], example="{'issuer': 'ca-issuer'}"
    )
    if value.get("mode", "secret" if "secret" in value else "cert-manager") != (
        "secret" if "secret" in value else "cert-manager"
    ):
        raise ValueError(
            "kubernetes.tls.mode is 'secret' with secret, else 'cert-manager', "
            f"got {value.get('mode')!r}"
        )
    if "secret" in value:
        if "issuer" in value:
            raise ValueError("kubernetes.tls: give either secret or issuer, not both")
        name = value["secret"]
        if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
            raise ValueError(f"kubernetes.tls.secret must name a Secret, got {name!r}")
        return {"mode": "secret", "secret": name}
    out = {"mode": "cert-manager"}
    issuer = value.get("issuer")
    if issuer is not None:
        if not isinstance(issuer, str) or not _DNS_SUBDOMAIN.match(issuer):
            raise ValueError(f"kubernetes.tls.issuer must name an Issuer, got {issuer!r}")
        out["issuer"] = issuer
    kind = value.get("issuer_kind", "Issuer")
    if kind not in ("Issuer", "ClusterIssuer"):
        raise ValueError(
            f"kubernetes.tls.issuer_kind must be Issuer or ClusterIssuer, got {kind!r}"
        )
    out["issuer_kind"] = kind
    return out


#: Convert ``resource_management``.
resource_management = one_of(*RESOURCE_MANAGEMENT)
