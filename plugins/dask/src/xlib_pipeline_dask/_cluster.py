"""Connecting to a Dask scheduler, or starting a local cluster of fresh worker processes.

Why not ``LocalCluster(processes=True)``: its nannies start workers with multiprocessing's
``spawn`` method (distributed's default ``distributed.worker.multiprocessing-method``), and
``spawn`` re-imports the driver's ``__main__`` script in every child. The user guide's
scripts have no ``if __name__ == "__main__":`` guard, so each worker would re-run the whole
script and the cluster fails to start ("Nanny failed to start"). ``fork`` avoids that but
forks a process full of threads.

Instead the scheduler runs in the driver (a :class:`distributed.SpecCluster` with an
in-process :class:`distributed.Scheduler`) and every worker is a fresh interpreter started
with ``python -m distributed.cli.dask_spec``: its ``__main__`` is dask's own CLI module, so
nothing of the user's script runs there. Tasks reach workers by value (cloudpickle pickles
functions and closures defined in ``__main__`` by value). A nanny, when used, spawns its
worker from that CLI process, which is equally safe.
"""

from __future__ import annotations

import atexit
import logging
import os
import ssl
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from xlib_pipeline import ConfigError, PipelineError, SettingWithoutEffectWarning

from ._fresh import fresh_worker_class
from ._settings import ADDRESS_ENV, SECURITY_FIELDS, DaskSettings, check_address

_log = logging.getLogger("xlib_pipeline.dask")


class ClusterStartError(PipelineError):
    """The Dask cluster could not be started or reached; ``address`` names it."""

    def __init__(self, message: str, *, address: str | None = None) -> None:
        super().__init__(message)
        self.address = address


def build_security(
    settings: DaskSettings, *, encryption_in_transit: bool, local: bool
) -> Any | None:
    """The :class:`distributed.security.Security` for the cluster, or ``None`` (plain TCP)."""
    sec = dict(settings.security)
    temporary = bool(sec.pop("temporary", False))
    has_files = any(k in sec for k in SECURITY_FIELDS)
    if not temporary and not has_files:
        if not encryption_in_transit:
            if sec.get("require_encryption"):
                raise ConfigError(
                    "distributed.security.require_encryption is true but no TLS credentials "
                    "are configured (tls_ca_file, tls_client_cert, tls_client_key ...)",
                    key="distributed.security",
                )
            return None
        temporary = True
    from distributed.security import Security

    if temporary:
        if not local:
            raise ConfigError(
                "encryption in transit to a remote Dask scheduler needs TLS credentials: set "
                "distributed.security = {'tls_ca_file': ..., 'tls_client_cert': ..., "
                "'tls_client_key': ...} and a tls:// distributed.address",
                key="distributed.security",
            )
        try:
            return Security.temporary()
        except ImportError as exc:
            raise ConfigError(
                "TLS for a local Dask cluster needs the 'cryptography' package: "
                "pip install 'xlib-pipeline-dask[tls]'",
                key="distributed.security",
            ) from exc
    version = sec.pop("tls_min_version", None)
    if version is not None:
        sec["tls_min_version"] = (
            ssl.TLSVersion.TLSv1_3 if version == 1.3 else ssl.TLSVersion.TLSv1_2
        )
    if encryption_in_transit or "require_encryption" not in sec:
        sec["require_encryption"] = True
    if local:  # one local cluster: every role may share the client's credentials
        for role in ("scheduler", "worker"):
            sec.setdefault(f"tls_{role}_cert", sec.get("tls_client_cert"))
            sec.setdefault(f"tls_{role}_key", sec.get("tls_client_key"))
    missing = [k for k in ("tls_ca_file", "tls_client_cert") if not sec.get(k)]
    if missing:
        raise ConfigError(
            f"distributed.security is missing {missing}: TLS needs a CA file and a client "
            "certificate (with its key in tls_client_key or appended to the certificate)",
            key="distributed.security",
        )
    return Security(**sec)


def _tls_env(security: Any) -> dict[str, str]:
    """Dask config variables giving a worker process the cluster's TLS credentials."""
    env: dict[str, str] = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
    pairs = {
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": security.tls_ca_file,
        "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": security.tls_worker_cert,
        "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": security.tls_worker_key,
        "DASK_DISTRIBUTED__COMM__TLS__CIPHERS": security.tls_ciphers,
    }
    for name, value in pairs.items():
        if value:
            env[name] = str(value)
    if security.tls_min_version == ssl.TLSVersion.TLSv1_3:
        env["DASK_DISTRIBUTED__COMM__TLS__MIN_VERSION"] = "1.3"
    return env


class ClusterHandle:
    """One manager's connection to Dask: a client, and the local cluster it may own.

    Nothing starts until :meth:`client` is first called. Thread-safe. Closed by the
    plugin's ``close`` hook, by the executor's ``close`` and at interpreter exit.
    """

    def __init__(
        self,
        settings: DaskSettings,
        *,
        cluster_type: str = "local",
        encryption_in_transit: bool = False,
        auto_scaling: bool = False,
        resource_management: str | None = None,
        worker_resources: Mapping[str, float] | Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        self.settings = settings
        # A callable is asked when a local cluster starts (the budget reads the machine
        # through psutil, which a manager that never starts a cluster should not import).
        self._budget = worker_resources
        self._budget_value: dict[str, float] | None = None
        self.cluster_type = cluster_type
        self.auto_scaling = auto_scaling
        self.resource_management = resource_management
        self.encryption_in_transit = encryption_in_transit
        self._lock = threading.Lock()
        self._client: Any = None
        self._cluster: Any = None
        self.security: Any = None
        self.address: str | None = None
        self.source: str | None = None  # "config", "env" or "local"
        self._threads: int | None = None

    @property
    def worker_resources(self) -> dict[str, float]:
        """What each local worker advertises as Dask worker resources (the run budget)."""
        if self._budget_value is None:
            b = self._budget
            self._budget_value = dict((b() if callable(b) else b) or {})
        return self._budget_value

    # -- address --------------------------------------------------------------------------------

    def target(self) -> tuple[str | None, str]:
        """Where to connect: ``(address, "config"|"env")`` or ``(None, "local")``."""
        if self.settings.address:
            return self.settings.address, "config"
        env = os.environ.get(ADDRESS_ENV)
        if env:
            try:
                return check_address(env, ADDRESS_ENV), "env"
            except ValueError as exc:
                raise ConfigError(str(exc), key="distributed.address") from exc
        if self.cluster_type == "dask":
            raise ConfigError(
                "cluster_type 'dask' needs a scheduler address: set distributed.address "
                f"(e.g. 'tcp://scheduler:8786') or the environment variable {ADDRESS_ENV}",
                key="distributed.address",
            )
        if self.cluster_type == "kubernetes":
            message = (
                "cluster_type 'kubernetes' has no scheduler address (distributed.address or "
                f"the environment variable {ADDRESS_ENV}), so a local Dask cluster on this "
                "machine runs the tasks instead. To use the cluster, render its scheduler "
                "with `xlib-pipeline render kubernetes --executor dask` and set "
                f"distributed.address (or {ADDRESS_ENV}) to 'tcp://<scheduler-service>:8786'."
            )
            _log.warning("dask.local_cluster_fallback: %s", message)
            warnings.warn(message, SettingWithoutEffectWarning, stacklevel=2)
        return None, "local"

    def local_shape(self) -> dict[str, Any]:
        """How the local cluster is shaped by ``distributed``, ``auto_scaling`` and
        ``resource_management`` (see docs/plugins/dask.md): workers at start, adaptive bounds
        (``None`` when fixed), threads and memory limit per worker."""
        s = self.settings
        adaptive: tuple[int, int] | None = None
        workers = s.n_workers
        if self.auto_scaling:
            high = s.maximum_workers or max(s.n_workers, os.cpu_count() or 1)
            adaptive = (s.minimum_workers, high)
            workers = min(max(s.n_workers, s.minimum_workers), high)
        memory: str | int | None = s.memory_limit
        if memory is None and self.resource_management == "kubernetes":
            memory = "auto"  # each worker gets its share of the machine; the nanny enforces it
        elif memory is None and self.resource_management == "local":
            memory = 0  # no per-worker limit: xlib-pipeline's own isolation limits tasks
        return {
            "workers": workers,
            "adaptive": adaptive,
            "threads_per_worker": s.threads_per_worker,
            "memory_limit": memory,
        }

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether a client is connected."""
        return self._client is not None

    def client(self) -> Any:
        """The connected :class:`distributed.Client` (connecting or starting on first use)."""
        c = self._client
        if c is not None:
            return c
        with self._lock:
            if self._client is None:
                self._start()
            return self._client

    def _start(self) -> None:
        from distributed import Client

        address, source = self.target()
        local = address is None
        security = build_security(
            self.settings, encryption_in_transit=self.encryption_in_transit, local=local
        )
        timeout = self.settings.startup_timeout
        if not local:
            assert address is not None
            scheme = address.split("://", 1)[0]
            if (security is not None or self.encryption_in_transit) and scheme != "tls":
                raise ConfigError(
                    f"distributed.address {address!r} is not encrypted but TLS is required "
                    "(distributed.security or security.encryption_in_transit); use tls://",
                    key="distributed.address",
                )
            try:
                client = Client(address, security=security, timeout=timeout, set_as_default=False)
            except Exception as exc:
                raise ClusterStartError(
                    f"cannot connect to the Dask scheduler at {address} (from {source}): "
                    f"{type(exc).__name__}: {exc}",
                    address=address,
                ) from exc
            self._client, self.security, self.address, self.source = (
                client,
                security,
                address,
                source,
            )
            _log.info("dask.connected address=%s source=%s", address, source)
        else:
            cluster, client = self._start_local(security, timeout)
            self._cluster, self._client, self.security = cluster, client, security
            self.address, self.source = cluster.scheduler_address, "local"
            _log.info("dask.local_cluster_started address=%s", self.address)
        atexit.register(_close_at_exit, weakref.ref(self))

    def _start_local(self, security: Any, timeout: float) -> tuple[Any, Any]:
        from distributed import Client, Scheduler, SpecCluster

        s = self.settings
        protocol = "tls://" if security is not None else "tcp://"
        scheduler = {
            "cls": Scheduler,
            "options": {
                "host": "127.0.0.1",
                "port": 0,
                "protocol": protocol,
                "security": security,
                "dashboard": s.dashboard,
                "dashboard_address": ":0" if s.dashboard else None,
            },
        }
        shape = self.local_shape()
        worker_kwargs: dict[str, Any] = {
            "nthreads": shape["threads_per_worker"],
            "host": "127.0.0.1",
            "death_timeout": s.death_timeout,
            "silence_logs": logging.CRITICAL,  # failures are reported in the driver
        }
        if shape["memory_limit"] is not None:
            worker_kwargs["memory_limit"] = shape["memory_limit"]
        if self.worker_resources:
            worker_kwargs["resources"] = dict(self.worker_resources)
        env = _tls_env(security) if security is not None else {}
        worker = {
            "cls": fresh_worker_class(),
            "options": {
                "worker_class": "distributed.Nanny"
                if s.worker_class == "nanny"
                else "distributed.Worker",
                "worker_kwargs": worker_kwargs,
                "env": env,
            },
        }
        cluster = None
        try:
            cluster = SpecCluster(
                workers={i: worker for i in range(shape["workers"])},
                scheduler=scheduler,
                worker=worker,
                security=security,
                silence_logs=logging.ERROR,
                name="xlib-pipeline-local",
            )
            client = Client(cluster, security=security, set_as_default=False)
            client.wait_for_workers(shape["workers"], timeout=timeout)
            if shape["adaptive"] is not None:
                low, high = shape["adaptive"]
                cluster.adapt(minimum=low, maximum=high)
        except Exception as exc:
            if cluster is not None:
                try:
                    cluster.close(timeout=10)
                except Exception:
                    pass
            raise ClusterStartError(
                f"the local Dask cluster ({shape['workers']} worker process(es)) did not start "
                f"within {timeout:g}s: {type(exc).__name__}: {exc}"
            ) from exc
        return cluster, client

    def total_threads(self) -> int:
        """Worker threads currently in the cluster (what can run at once)."""
        client = self.client()
        try:
            n = sum(client.nthreads().values())
        except Exception:
            n = self._threads or 1
        self._threads = int(n)
        return max(1, int(n))

    def close(self) -> None:
        """Disconnect, and stop the local cluster if this handle started one."""
        with self._lock:
            client, cluster = self._client, self._cluster
            self._client = self._cluster = None
        if client is not None:
            try:
                client.close(timeout=10)
            except Exception:  # pragma: no cover - best effort
                pass
        if cluster is not None:
            try:
                cluster.close(timeout=20)
            except Exception:  # pragma: no cover - best effort
                pass
            _log.info("dask.local_cluster_stopped")


def _close_at_exit(ref: weakref.ref[ClusterHandle]) -> None:
    handle = ref()
    if handle is not None:
        handle.close()
