"""Redis Streams source and sink for xlib-pipeline streams (``redis://`` URLs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xlib_pipeline import StreamConnector, hookimpl

from ._connectors import RedisStreamSink, RedisStreamSource

__all__ = ["RedisPlugin", "RedisStreamSink", "RedisStreamSource"]


def _source(url: str, options: Any) -> RedisStreamSource:
    return RedisStreamSource.from_url(url, options)


def _sink(url: str, options: Any) -> RedisStreamSink:
    return RedisStreamSink.from_url(url, options)


class RedisPlugin:
    """Registers the ``redis`` and ``rediss`` stream connectors."""

    name = "redis"

    @hookimpl
    def register_stream_connectors(self) -> Iterable[StreamConnector]:
        doc = (
            "Redis Streams: source redis://HOST:PORT/STREAM?group=G (consumer groups, "
            "XAUTOCLAIM); sink redis://HOST:PORT/STREAM (MULTI/EXEC exactly-once)"
        )
        return (
            StreamConnector(scheme="redis", source=_source, sink=_sink, doc=doc),
            StreamConnector(scheme="rediss", source=_source, sink=_sink, doc=doc + " over TLS"),
        )
