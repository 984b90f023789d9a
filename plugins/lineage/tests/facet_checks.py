"""Checks of the standard OpenLineage facets the lineage plugin writes (``jobType``,
``processing_engine``, ``jobDependencies``), shared by the lineage tests.

Every facet is checked against the OpenLineage 2-0-2 base facet definitions (the spec copy
in ``schemas/``) and against the model openlineage-python ships for it: the facet is rebuilt
as the client's class (an unknown or missing field fails, run ids must be UUIDs) and
serialized back to exactly the same JSON. No network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import referencing
from openlineage.client.facet_v2 import job_dependencies_run as jd
from openlineage.client.facet_v2 import job_type_job as jt
from openlineage.client.facet_v2 import processing_engine_run as pe
from openlineage.client.serde import Serde

SCHEMAS = Path(__file__).parent / "schemas"


def _base_validators() -> dict[str, Any]:
    """Validators of the spec's (2-0-2) base ``RunFacet`` and ``JobFacet``."""
    from referencing.jsonschema import DRAFT202012

    core = json.loads((SCHEMAS / "OpenLineage.json").read_text())
    defs = core["definitions"]
    alias = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": defs,
        "definitions": defs,
    }
    uri = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
    registry = referencing.Registry().with_resource(
        uri,
        referencing.Resource.from_contents(alias, default_specification=DRAFT202012),
    )
    cls = jsonschema.Draft202012Validator
    return {
        kind: cls(
            {"$ref": f"{uri}#/$defs/{kind}"},
            registry=registry,
            format_checker=cls.FORMAT_CHECKER,
        )
        for kind in ("RunFacet", "JobFacet")
    }


BASE = _base_validators()


def _as_client(facet: dict[str, Any], build: Any, schema: str, base: str) -> None:
    """``facet`` is a valid ``base`` facet, names ``schema``, and round-trips unchanged
    through the client's model of it."""
    BASE[base].validate(facet)
    assert facet["_schemaURL"] == schema
    fields = {k: v for k, v in facet.items() if not k.startswith("_")}
    obj = build(fields, facet["_producer"])
    assert Serde.to_dict(obj) == facet


def check_job_type(facet: dict[str, Any]) -> None:
    _as_client(
        facet,
        lambda f, p: jt.JobTypeJobFacet(**f, producer=p),
        jt.JobTypeJobFacet._get_schema(),
        "JobFacet",
    )


def check_engine(facet: dict[str, Any]) -> None:
    _as_client(
        facet,
        lambda f, p: pe.ProcessingEngineRunFacet(**f, producer=p),
        pe.ProcessingEngineRunFacet._get_schema(),
        "RunFacet",
    )


def _dependency(d: dict[str, Any]) -> Any:
    rest = {k: v for k, v in d.items() if k not in ("job", "run")}
    return jd.JobDependency(
        job=jd.JobIdentifier(**d["job"]), run=jd.RunIdentifier(**d["run"]), **rest
    )


def check_dependencies(facet: dict[str, Any]) -> None:
    def build(f: dict[str, Any], p: str) -> Any:
        rest = {k: v for k, v in f.items() if k not in ("upstream", "downstream")}
        return jd.JobDependenciesRunFacet(
            upstream=[_dependency(d) for d in f["upstream"]],
            downstream=[_dependency(d) for d in f["downstream"]],
            producer=p,
            **rest,
        )

    _as_client(facet, build, jd.JobDependenciesRunFacet._get_schema(), "RunFacet")
