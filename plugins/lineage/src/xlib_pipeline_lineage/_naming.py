"""Dataset URIs to OpenLineage namespace and name, through openlineage-python's ``naming``
helpers (the OpenLineage naming conventions), never hand-made parsing of each system.

``postgres://db:5432/shop.public.orders`` -> namespace ``postgres://db:5432``, name
``shop.public.orders``; ``s3://lake/clean/orders`` -> ``s3://lake`` and ``clean/orders``;
``file:///data/x.csv`` -> ``file`` and ``/data/x.csv``. A URI whose path does not have the
parts a helper needs (a two-part ``postgres://db:5432/shop.orders``) keeps the helper's
namespace and joins the parts with dots, as the helper would. An unknown scheme gives
``scheme://authority`` and the path without its leading slash.

Two steps, so that declaring a task costs no heavy import: :func:`check_uri` splits a URI
into the helper's fields and refuses an empty one (what the helpers refuse) without
importing openlineage; :func:`from_uri` builds the helper itself (openlineage is imported on
the first call, when lineage is on and a run names its datasets).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, urlsplit

#: Default ports, as the naming convention writes them into the namespace.
_PORTS = {
    "postgres": "5432",
    "mysql": "3306",
    "hive": "10000",
    "kafka": "9092",
    "trino": "8080",
    "redshift": "5439",
    "oracle": "1521",
    "db2": "50000",
    "hdfs": "8020",
}

#: SQL-like schemes: ``(helper class in openlineage.client.naming.dataset, fields of the
#: dotted path)``.
_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "postgres": ("Postgres", ("database", "schema", "table")),
    "mysql": ("MySQL", ("database", "table")),
    "hive": ("Hive", ("database", "table")),
    "trino": ("Trino", ("catalog", "schema", "table")),
}
_ALIASES = {"postgresql": "postgres"}

#: A URI resolved without openlineage: the helper's class name and keyword fields, or
#: ``None`` and ``{"namespace", "name"}`` when no helper applies.
_Resolved = tuple[str | None, dict[str, str]]


def _parts(path: str) -> list[str]:
    """``/shop.public.orders`` or ``/shop/public/orders`` -> ``["shop", "public", "orders"]``."""
    return [p for chunk in path.strip("/").split("/") for p in chunk.split(".") if p]


def _host_port(uri: SplitResult, scheme: str) -> tuple[str, str]:
    host = uri.hostname or ""
    try:
        port = uri.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    return host, str(port) if port is not None else _PORTS.get(scheme, "")


def _resolve(scheme: str, uri: SplitResult) -> _Resolved:
    """The naming helper for ``uri`` and its fields (no openlineage import)."""
    path = uri.path
    if scheme in _TABLES:
        helper, fields = _TABLES[scheme]
        host, port = _host_port(uri, scheme)
        parts = _parts(path)
        if len(parts) == len(fields) and host and port:
            return helper, {"host": host, "port": port, **dict(zip(fields, parts, strict=True))}
        if not host or not parts:
            raise ValueError(f"expected {scheme}://HOST[:PORT]/{'.'.join(fields).upper()}")
        ns = f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"
        return None, {"namespace": ns, "name": ".".join(parts)}
    if scheme in ("s3", "gs"):
        helper = "S3" if scheme == "s3" else "GCS"
        return helper, {"bucket_name": uri.netloc, "object_key": path.lstrip("/")}
    if scheme == "kafka":
        host, port = _host_port(uri, scheme)
        return "Kafka", {"bootstrap_server_host": host, "port": port, "topic": path.strip("/")}
    if scheme == "hdfs":
        host, port = _host_port(uri, scheme)
        return "HDFS", {"namenode_host": host, "namenode_port": port, "path": path}
    if scheme == "file":
        if uri.netloc in ("", "localhost"):
            return "LocalFileSystem", {"path": path}
        return "RemoteFileSystem", {"host": uri.netloc, "path": path}
    if scheme in ("abfss", "wasbs"):
        container, _, account = uri.netloc.partition("@")
        service = account.split(".")[0]
        if scheme == "abfss":
            return "ABFSS", {"container": container, "service": service, "path": path.lstrip("/")}
        key = path.lstrip("/")
        return "WASBS", {"container": container, "service_name": service, "object_key": key}
    if not uri.netloc:
        raise ValueError("expected scheme://authority/path")
    return None, {"namespace": f"{uri.scheme}://{uri.netloc}", "name": path.lstrip("/") or "/"}


def _checked(text: str) -> _Resolved:
    uri = urlsplit(text)
    scheme = _ALIASES.get(uri.scheme.lower(), uri.scheme.lower())
    try:
        helper, fields = _resolve(scheme, uri)
        for key, value in fields.items():
            if not value.strip():  # the helpers' own check (_check_not_empty)
                raise ValueError(f"a part is empty ({key} cannot be empty)")
    except ValueError as exc:
        raise ValueError(f"dataset {text!r}: {exc}") from None
    return helper, fields


def check_uri(text: str) -> None:
    """Refuse a dataset URI the naming helpers would refuse, without importing openlineage.

    Raises ``ValueError`` naming the URI and what was expected.
    """
    _checked(text)


def from_uri(text: str) -> dict[str, str]:
    """``{"namespace", "name"}`` of a dataset URI (``scheme://authority/path``), named by
    openlineage-python's helper for its scheme (imports openlineage on first call).

    Raises ``ValueError`` naming the URI and what was expected.
    """
    helper, fields = _checked(text)
    if helper is None:
        return fields
    from openlineage.client.naming import dataset as naming

    try:
        named: Any = getattr(naming, helper)(**fields)
    except (ValueError, TypeError) as exc:  # pragma: no cover - _checked refuses these first
        raise ValueError(f"dataset {text!r}: {exc}") from None
    return {"namespace": str(named.get_namespace()), "name": str(named.get_name())}
