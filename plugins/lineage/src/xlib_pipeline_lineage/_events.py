"""OpenLineage run events as plain JSON-ready dicts, and their openlineage-python twins.

Events are built as dicts (cheap, and exactly what the file transport writes as one JSON
line). For transports other than ``file`` they are converted to the client's
``openlineage.client.event_v2`` objects and emitted through ``OpenLineageClient``.

Naming conventions (documented in docs/plugins/lineage.md):

* job namespace: config ``lineage.namespace`` (default ``"xlib-pipeline"``);
* pipeline run: job name = pipeline name, runId = the core's run id (a UUIDv7);
* task run: job name = ``"<pipeline>.<task>"``, runId = :func:`task_run_id` (a UUIDv5 of
  the pipeline run id and the task name, so anyone can recompute it); its ``parent`` run
  facet names the pipeline run, which is also its ``root``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from xlib_pipeline import OutputLevel

from ._naming import check_uri, from_uri

#: The schema URLs (``PARENT_SCHEMA``, ``ERROR_SCHEMA``, ``EVENT_SCHEMA``,
#: ``NOMINAL_TIME_SCHEMA``, ``JOB_TYPE_SCHEMA``, ``PROCESSING_ENGINE_SCHEMA``,
#: ``JOB_DEPENDENCIES_SCHEMA``) come from the installed client so they always match it.
#: They are looked up on first use: openlineage is imported only once lineage is on,
#: never when the plugin is merely installed.
_SCHEMA_NAMES = (
    "PARENT_SCHEMA",
    "ERROR_SCHEMA",
    "EVENT_SCHEMA",
    "NOMINAL_TIME_SCHEMA",
    "JOB_TYPE_SCHEMA",
    "PROCESSING_ENGINE_SCHEMA",
    "JOB_DEPENDENCIES_SCHEMA",
)


@functools.cache
def schema(name: str) -> str:
    """The client's schema URL ``name`` (one of :data:`_SCHEMA_NAMES`); imports openlineage
    on first call."""
    from openlineage.client.event_v2 import RunEvent
    from openlineage.client.facet_v2 import (
        error_message_run,
        job_dependencies_run,
        job_type_job,
        nominal_time_run,
        parent_run,
        processing_engine_run,
    )

    found: Any = {
        "NOMINAL_TIME_SCHEMA": nominal_time_run.NominalTimeRunFacet,
        "PARENT_SCHEMA": parent_run.ParentRunFacet,
        "ERROR_SCHEMA": error_message_run.ErrorMessageRunFacet,
        "EVENT_SCHEMA": RunEvent,
        "JOB_TYPE_SCHEMA": job_type_job.JobTypeJobFacet,
        "PROCESSING_ENGINE_SCHEMA": processing_engine_run.ProcessingEngineRunFacet,
        "JOB_DEPENDENCIES_SCHEMA": job_dependencies_run.JobDependenciesRunFacet,
    }[name]
    return str(found._get_schema())


def __getattr__(name: str) -> str:
    if name in _SCHEMA_NAMES:
        return schema(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The ``integration`` of the ``jobType`` job facet.
INTEGRATION = "XLIB_PIPELINE"

#: Base of the identifiers of xlib-pipeline's own facet schemas, shipped in ``schemas/``.
FACET_SCHEMA_BASE = "https://xlib-pipeline.dev/spec/facets/1-0-0/"
RUN_FACET = "xlibPipeline_run"
RUN_FACET_SCHEMA = (
    FACET_SCHEMA_BASE + "XlibPipelineTaskRunFacet.json#/$defs/XlibPipelineTaskRunFacet"
)
CLASSIFICATION_FACET = "xlibPipeline_classification"
CLASSIFICATION_FACET_SCHEMA = (
    FACET_SCHEMA_BASE
    + "XlibPipelineClassificationDatasetFacet.json#/$defs/XlibPipelineClassificationDatasetFacet"
)

DEFAULT_NAMESPACE = "xlib-pipeline"


def default_producer() -> str:
    """The producer URI written on every event and facet unless configured."""
    from . import __version__

    return f"https://pypi.org/project/xlib-pipeline-lineage/{__version__}/"


def task_run_id(pipeline_run_id: str, task: str) -> str:
    """The OpenLineage runId of ``task`` in pipeline run ``pipeline_run_id``.

    ``uuid5(UUID(pipeline_run_id), task)``: deterministic, so anyone holding a run id can
    find the task runs of that run.
    """
    return str(uuid.uuid5(uuid.UUID(pipeline_run_id), task))


#: The UUID variant's hex digit (RFC 4122: bits 10xx) for each hex digit of the hash.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def fast_uuid5(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` without building UUID objects: the
    SHA-1's first 32 hex digits with the version (5) and variant digits put in."""
    x = hashlib.sha1(namespace + name.encode()).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


def quote(text: str) -> str:
    """``json.dumps(text)``, without the encoder for the usual name (printable ASCII with no
    quote or backslash: nothing to escape)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


_SECOND: tuple[int, str] = (-1, "")


def iso(ts: float) -> str:
    """A POSIX timestamp as an RFC 3339 UTC date-time: exactly
    ``datetime.fromtimestamp(ts, UTC).isoformat()``, with the text of the current second
    cached (every event of a run carries one; most fall in the same second as the last)."""
    global _SECOND
    sec = int(ts)
    # the microseconds as datetime.fromtimestamp rounds them (half-even, of the exact
    # fraction: ts - sec is exact for a positive float)
    us = round((ts - sec) * 1e6) if ts >= 0 else -1
    if not 0 <= us < 1_000_000:
        return datetime.fromtimestamp(ts, UTC).isoformat()
    cached = _SECOND
    if cached[0] != sec:
        cached = _SECOND = (sec, datetime.fromtimestamp(sec, UTC).isoformat()[:-6])
    return f"{cached[1]}.{us:06d}+00:00" if us else f"{cached[1]}+00:00"


def parse_dataset(
    value: Any, default_namespace: str = DEFAULT_NAMESPACE, *, check_only: bool = False
) -> dict[str, Any]:
    """Normalise one ``inputs=``/``outputs=`` entry into ``{"namespace", "name"[, "facets"]}``.

    Strings: a URI ``"scheme://authority/path"`` is named by openlineage-python's naming
    helpers, following the OpenLineage naming conventions (see :mod:`._naming`:
    ``postgres://db:5432/shop.orders`` is ``shop.orders`` in ``postgres://db:5432``,
    ``s3://lake/clean/orders`` is ``clean/orders`` in ``s3://lake``); otherwise
    ``"namespace:name"`` splits at the first colon; a bare ``"name"`` uses
    ``default_namespace``. Dicts need ``name`` and may give ``namespace`` and ``facets`` (a
    mapping of OpenLineage dataset facets); they are taken as given.

    ``check_only=True`` validates a URI as the naming helpers would without importing
    openlineage (a task's declaration), and returns the URI unnamed.
    """
    if isinstance(value, str):
        if not value:
            raise ValueError("a dataset name must be a non-empty string")
        if "://" in value:
            scheme, _, rest = value.partition("://")
            if not scheme or not rest or (rest.startswith("/") and scheme != "file"):
                raise ValueError(f"dataset {value!r}: expected 'scheme://authority/path'")
            if check_only:
                check_uri(value)
                return {"namespace": default_namespace, "name": value}
            return from_uri(value)
        ns, sep, name = value.partition(":")
        if sep:
            if not ns or not name:
                raise ValueError(f"dataset {value!r}: expected 'namespace:name'")
            return {"namespace": ns, "name": name}
        return {"namespace": default_namespace, "name": value}
    if isinstance(value, Mapping):
        unknown = set(value) - {"namespace", "name", "facets"}
        if unknown:
            raise ValueError(
                f"dataset {dict(value)!r}: unknown key(s) {sorted(unknown)}; "
                "expected 'namespace', 'name', 'facets'"
            )
        dname: Any = value.get("name")
        dns: Any = value.get("namespace", default_namespace)
        if not isinstance(dname, str) or not dname:
            raise ValueError(f"dataset {dict(value)!r}: 'name' must be a non-empty string")
        if not isinstance(dns, str) or not dns:
            raise ValueError(f"dataset {dict(value)!r}: 'namespace' must be a non-empty string")
        out: dict[str, Any] = {"namespace": dns, "name": dname}
        facets = value.get("facets")
        if facets is not None:
            if not isinstance(facets, Mapping) or not all(
                isinstance(f, Mapping) for f in facets.values()
            ):
                raise ValueError(f"dataset {dname!r}: 'facets' must map facet names to dicts")
            out["facets"] = {k: dict(v) for k, v in facets.items()}
        return out
    raise ValueError(
        f"a dataset must be 'namespace:name' or a dict with 'name', got {type(value).__name__}"
    )


def parse_datasets(
    value: Any, default_namespace: str = DEFAULT_NAMESPACE, *, check_only: bool = False
) -> list[dict[str, Any]]:
    """Normalise an ``inputs=``/``outputs=`` option (one entry or a list of entries);
    ``check_only`` as in :func:`parse_dataset`."""
    if value is None:
        return []
    if isinstance(value, str | Mapping):
        value = [value]
    if not isinstance(value, Sequence):
        raise ValueError(f"expected a list of datasets, got {type(value).__name__}")
    return [parse_dataset(v, default_namespace, check_only=check_only) for v in value]


def run_event(
    event_type: str,
    ts: float,
    *,
    run_id: str,
    namespace: str,
    job: str,
    producer: str,
    run_facets: dict[str, Any] | None = None,
    job_facets: dict[str, Any] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One OpenLineage ``RunEvent`` as a dict."""
    run: dict[str, Any] = {"runId": run_id}
    if run_facets:
        run["facets"] = run_facets
    job_: dict[str, Any] = {"namespace": namespace, "name": job}
    if job_facets:
        job_["facets"] = job_facets
    return {
        "eventType": event_type,
        "eventTime": iso(ts),
        "producer": producer,
        "schemaURL": schema("EVENT_SCHEMA"),
        "run": run,
        "job": job_,
        "inputs": inputs or [],
        "outputs": outputs or [],
    }


def parent_facet(producer: str, run_id: str, namespace: str, job: str) -> dict[str, Any]:
    """The standard ``parent`` run facet (the pipeline run is parent and root, so the
    optional ``root`` field is left out)."""
    ref = {"run": {"runId": run_id}, "job": {"namespace": namespace, "name": job}}
    return {"_producer": producer, "_schemaURL": schema("PARENT_SCHEMA"), **ref}


def error_facet(
    producer: str,
    error: BaseException | None,
    stack: str | None,
    describe: Callable[[BaseException], str] | None = None,
    redact: Callable[[str], str] = str,
) -> dict[str, Any]:
    """The standard ``errorMessage`` run facet (message truncated to 1,000 characters).

    The message comes from ``describe`` and the stack trace passes ``redact`` (the manager's
    ``describe_error``/``redact``, which remove PII when classification's detection is on):
    error texts quote data.
    """
    if error is None:
        message = "unknown error"
    elif describe is not None:
        message = describe(error)[:1000]
    else:
        message = f"{type(error).__name__}: {error}"[:1000]
    if stack:
        stack = redact(stack)
    out: dict[str, Any] = {
        "_producer": producer,
        "_schemaURL": schema("ERROR_SCHEMA"),
        "message": message,
        "programmingLanguage": "python",
    }
    if stack:
        out["stackTrace"] = stack
    return out


def job_type_facet(producer: str, job_type: str, processing: str = "BATCH") -> dict[str, Any]:
    """The standard ``jobType`` job facet: ``DAG`` for a pipeline, ``TASK`` for a task."""
    return {
        "_producer": producer,
        "_schemaURL": schema("JOB_TYPE_SCHEMA"),
        "processingType": processing,
        "integration": INTEGRATION,
        "jobType": job_type,
    }


def processing_engine_facet(producer: str) -> dict[str, Any]:
    """The standard ``processing_engine`` run facet: xlib-pipeline and this plugin's
    versions (as installed)."""
    import importlib.metadata as md

    from . import __version__ as adapter

    try:
        version = md.version("xlib-pipeline")
    except md.PackageNotFoundError:  # pragma: no cover - a source tree on sys.path
        import xlib_pipeline

        version = xlib_pipeline.__version__
    return {
        "_producer": producer,
        "_schemaURL": schema("PROCESSING_ENGINE_SCHEMA"),
        "version": version,
        "name": "xlib-pipeline",
        "openlineageAdapterVersion": adapter,
    }


def job_dependencies_facet(
    producer: str,
    namespace: str,
    pipeline: str,
    run_id: str,
    upstream: Sequence[str],
    downstream: Sequence[str],
    run_of: Callable[[str], str],
    trigger_rule: str = "ALL_SUCCESS",
) -> dict[str, Any]:
    """The standard ``jobDependencies`` run facet of a task run: the task runs it waits
    for (``upstream``) and those that wait for it (``downstream``), each named by job and
    runId (``run_of(task)``). A task starts when all its upstreams finished successfully."""

    def dep(task: str) -> dict[str, Any]:
        return {
            "job": {"namespace": namespace, "name": f"{pipeline}.{task}"},
            "run": {"runId": run_of(task)},
            "dependency_type": "DIRECT_INVOCATION",
            "sequence_trigger_rule": "FINISH_TO_START",
            "status_trigger_rule": "EXECUTE_ON_SUCCESS",
        }

    return {
        "_producer": producer,
        "_schemaURL": schema("JOB_DEPENDENCIES_SCHEMA"),
        "upstream": [dep(t) for t in upstream],
        "downstream": [dep(t) for t in downstream],
        "trigger_rule": trigger_rule,
    }


def xlib_facet(producer: str, **fields: Any) -> dict[str, Any]:
    """xlib-pipeline's own run facet (schema: schemas/XlibPipelineTaskRunFacet.json)."""
    out = {"_producer": producer, "_schemaURL": RUN_FACET_SCHEMA}
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def nominal_time_facet(producer: str, start: str) -> dict[str, Any]:
    """The standard ``nominalTime`` run facet: the time the run is *for* (its logical date,
    param ``logical_date``), not when it ran."""
    return {
        "_producer": producer,
        "_schemaURL": schema("NOMINAL_TIME_SCHEMA"),
        "nominalStartTime": start,
    }


def classification_facet(producer: str, entry: OutputLevel) -> dict[str, Any]:
    """The classification dataset facet of one output's :class:`OutputLevel`."""
    out: dict[str, Any] = {
        "_producer": producer,
        "_schemaURL": CLASSIFICATION_FACET_SCHEMA,
        "level": entry.level,
    }
    if entry.declared is not None:
        out["declared"] = entry.declared
    if entry.detected:
        out["detected"] = list(entry.detected)
    return out


# --- conversion to openlineage-python objects (non-file transports) -------------------------


def _job_facets(facets: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not facets:
        return None
    from openlineage.client.facet_v2 import job_type_job

    out: dict[str, Any] = {}
    jt = facets.get("jobType")
    if jt is not None:
        out["jobType"] = job_type_job.JobTypeJobFacet(
            processingType=jt["processingType"],
            integration=jt["integration"],
            jobType=jt.get("jobType"),
            producer=jt["_producer"],
        )
    return out or None


def to_client_event(event: Mapping[str, Any]) -> Any:
    """Convert an event dict into an ``openlineage.client.event_v2.RunEvent``."""
    from openlineage.client import event_v2

    run = event["run"]
    job = event["job"]
    return event_v2.RunEvent(
        eventType=event_v2.RunState(event["eventType"]),
        eventTime=event["eventTime"],
        producer=event["producer"],
        run=event_v2.Run(runId=run["runId"], facets=_run_facets(run.get("facets") or {})),
        job=event_v2.Job(
            namespace=job["namespace"], name=job["name"], facets=_job_facets(job.get("facets"))
        ),
        inputs=[
            event_v2.InputDataset(
                namespace=d["namespace"], name=d["name"], facets=_generic(d.get("facets"))
            )
            for d in event.get("inputs") or ()
        ],
        outputs=[
            event_v2.OutputDataset(
                namespace=d["namespace"], name=d["name"], facets=_generic(d.get("facets"))
            )
            for d in event.get("outputs") or ()
        ],
    )


def _run_facets(facets: Mapping[str, Any]) -> dict[str, Any]:
    from openlineage.client.facet_v2 import error_message_run, nominal_time_run, parent_run

    out: dict[str, Any] = {}
    for key, f in facets.items():
        if key == "parent":
            root = f.get("root")
            out[key] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=f["run"]["runId"]),
                job=parent_run.Job(namespace=f["job"]["namespace"], name=f["job"]["name"]),
                root=parent_run.Root(
                    run=parent_run.RootRun(runId=root["run"]["runId"]),
                    job=parent_run.RootJob(
                        namespace=root["job"]["namespace"], name=root["job"]["name"]
                    ),
                )
                if root
                else None,
                producer=f["_producer"],
            )
        elif key == "nominalTime":
            out[key] = nominal_time_run.NominalTimeRunFacet(
                nominalStartTime=f["nominalStartTime"], producer=f["_producer"]
            )
        elif key == "errorMessage":
            out[key] = error_message_run.ErrorMessageRunFacet(
                message=f["message"],
                programmingLanguage=f["programmingLanguage"],
                stackTrace=f.get("stackTrace"),
                producer=f["_producer"],
            )
        else:
            out[key] = _GenericFacet(f)
    return out


def _generic(facets: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: _GenericFacet(v) for k, v in (facets or {}).items()}


class _GenericFacet(dict):  # type: ignore[type-arg]
    """A facet kept as its JSON dict; the client's serializer writes dicts as they are."""
