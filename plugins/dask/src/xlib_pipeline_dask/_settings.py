"""Config conversion for the ``distributed`` section and the ``distribute``/``map_over`` options."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from xlib_pipeline import check_keys, one_of

#: Environment variable naming a scheduler address when config gives none.
ADDRESS_ENV = "XLIB_PIPELINE_DASK_ADDRESS"
CLUSTER_TYPES = ("local", "dask", "kubernetes")
WORKER_CLASSES = ("nanny", "worker")
SCOPES = ("all", "marked")
SCHEMES = ("tcp", "tls", "inproc", "ucx", "ws", "wss")

#: Keyword arguments of ``distributed.security.Security`` accepted under ``security``.
SECURITY_FIELDS = (
    "tls_ca_file",
    "tls_client_cert",
    "tls_client_key",
    "tls_scheduler_cert",
    "tls_scheduler_key",
    "tls_worker_cert",
    "tls_worker_key",
    "tls_ciphers",
)
SECURITY_KEYS = (*SECURITY_FIELDS, "require_encryption", "tls_min_version", "temporary")


def _pos_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"distributed.{name} must be a positive integer, got {value!r}")
    return value


def _pos_float(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= 1e9  # also refuses NaN
    ):
        raise ValueError(
            f"distributed.{name} must be a positive finite number (at most 1e9), got {value!r}"
        )
    return float(value)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"distributed.{name} must be true or false, got {value!r}")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"distributed.{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def check_address(value: Any, where: str = "distributed.address") -> str:
    """A scheduler address ``scheme://host:port`` (a bare ``host:port`` means ``tcp://``)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a scheduler address like 'tcp://host:8786'")
    address = value.strip()
    if "://" not in address:
        address = "tcp://" + address
    scheme = address.split("://", 1)[0]
    if scheme not in SCHEMES:
        raise ValueError(
            f"{where} {address!r}: unknown scheme {scheme!r}; expected one of {SCHEMES}"
        )
    return address


def check_security(value: Any) -> dict[str, Any]:
    """The ``distributed.security`` mapping: Security keyword arguments (file paths or PEM)."""
    if not isinstance(value, Mapping):
        raise ValueError(
            "distributed.security must be a mapping such as "
            "{'tls_ca_file': 'ca.pem', 'tls_client_cert': 'client.pem', ...}"
        )
    unknown = sorted(set(value) - set(SECURITY_KEYS))
    if unknown:
        raise ValueError(
            f"distributed.security: unknown key(s) {unknown}; "
            f"expected some of {list(SECURITY_KEYS)}"
        )
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in ("require_encryption", "temporary"):
            out[key] = _bool(f"security.{key}", item)
        elif key == "tls_min_version":
            if item not in (1.2, 1.3):
                raise ValueError(
                    f"distributed.security.tls_min_version must be 1.2 or 1.3, got {item!r}"
                )
            out[key] = item
        else:
            if not isinstance(item, str | os.PathLike) or not str(item):
                raise ValueError(f"distributed.security.{key} must be a file path, got {item!r}")
            text = str(item)
            if "\n" not in text and not os.path.isfile(text):
                raise ValueError(f"distributed.security.{key}: file {text!r} does not exist")
            out[key] = text
    return out


@attrs.frozen(kw_only=True)
class DaskSettings:
    """The validated ``distributed`` section (every field optional)."""

    address: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1
    worker_class: str = "nanny"
    memory_limit: str | int | None = None
    security: Mapping[str, Any] = attrs.field(factory=dict)
    lanes: int | None = None
    scope: str = "all"
    startup_timeout: float = 60.0
    death_timeout: float = 60.0
    dashboard: bool = False
    #: Bounds of adaptive scaling (config ``auto_scaling: true``) of the local cluster.
    minimum_workers: int = 1
    maximum_workers: int | None = None


_COUNT_KEYS = ("n_workers", "threads_per_worker", "lanes", "minimum_workers", "maximum_workers")


def settings_section(value: Any) -> DaskSettings:
    """Convert the ``distributed`` config section to :class:`DaskSettings`."""
    if isinstance(value, DaskSettings):
        return value
    fields = sorted(f.name for f in attrs.fields(DaskSettings))
    value = check_keys(
        value, fields, example="{'address': 'tcp://scheduler:8786'} or {'n_workers': 4}"
    )
    kw: dict[str, Any] = {}
    for key, item in value.items():
        if item is None:
            continue
        if key == "address":
            kw[key] = check_address(item)
        elif key in (
            "n_workers",
            "threads_per_worker",
            "lanes",
            "minimum_workers",
            "maximum_workers",
        ):
            kw[key] = _pos_int(key, item)
        elif key in ("startup_timeout", "death_timeout"):
            kw[key] = _pos_float(key, item)
        elif key == "dashboard":
            kw[key] = _bool(key, item)
        elif key == "worker_class":
            kw[key] = _choice(key, item, WORKER_CLASSES)
        elif key == "scope":
            kw[key] = _choice(key, item, SCOPES)
        elif key == "memory_limit":
            if isinstance(item, bool) or not isinstance(item, str | int):
                raise ValueError(
                    f"distributed.memory_limit must be like '2GiB' or bytes, got {item!r}"
                )
            kw[key] = item
        elif key == "security":
            kw[key] = check_security(item)
    low, high = kw.get("minimum_workers", 1), kw.get("maximum_workers")
    if high is not None and high < low:
        raise ValueError(
            f"distributed.maximum_workers ({high}) is below distributed.minimum_workers ({low})"
        )
    return DaskSettings(**kw)


#: Convert ``cluster_type``.
cluster_type = one_of(*CLUSTER_TYPES)


@attrs.frozen(kw_only=True)
class DistributeSpec:
    """A task's ``distribute`` option, normalised."""

    parallelism: int | str = "auto"
    map_over: int | None = None
    keep_remote: bool = False


def map_index(value: Any, where: str = "map_over") -> int:
    """``map_over``: index (in ``depends_on`` order) of the upstream argument holding the list."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{where} must be the index (0, 1, ...) of the upstream argument holding the list "
            f"to map over, got {value!r}"
        )
    return value


def distribute_spec(value: Any) -> DistributeSpec:
    """Convert the ``distribute`` task option (``True`` or a mapping)."""
    if isinstance(value, DistributeSpec):
        return value
    if value is True:
        return DistributeSpec()
    if not isinstance(value, Mapping):
        raise ValueError(
            "distribute must be True or a mapping like {'parallelism': 'auto', "
            "'map_over': 0, 'keep_remote': False}"
        )
    allowed = {"parallelism", "map_over", "keep_remote"}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(
            f"distribute: unknown key(s) {unknown}; expected some of {sorted(allowed)}"
        )
    par = value.get("parallelism", "auto")
    if not (par == "auto" or (isinstance(par, int) and not isinstance(par, bool) and par > 0)):
        raise ValueError(f"distribute.parallelism must be 'auto' or a positive int, got {par!r}")
    mo = value.get("map_over")
    keep = value.get("keep_remote", False)
    if not isinstance(keep, bool):
        raise ValueError(f"distribute.keep_remote must be true or false, got {keep!r}")
    return DistributeSpec(
        parallelism=par,
        map_over=None if mo is None else map_index(mo, "distribute.map_over"),
        keep_remote=keep,
    )
