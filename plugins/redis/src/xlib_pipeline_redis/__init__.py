"""Redis Streams source and sink for xlib-pipeline streams (``redis://`` URLs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from xlib_pipeline import StreamConnector, hookimpl, lazy_exports

# redis-py is imported when a stream first opens a redis:// URL, never when the plugin is
# merely installed: entry points load on every PipelineManager().
if TYPE_CHECKING:  # pragma: no cover
    from ._connectors import RedisStreamSink, RedisStreamSource

__all__ = ["RedisPlugin", "RedisStreamSink", "RedisStreamSource"]


if not TYPE_CHECKING:  # mypy sees the names above, and flags a misspelt one
    __getattr__, __dir__ = lazy_exports(
        __name__, {"RedisStreamSink": "._connectors", "RedisStreamSource": "._connectors"}
    )


def _source(url: str, options: Any) -> RedisStreamSource:
    from ._connectors import RedisStreamSource

    return RedisStreamSource.from_url(url, options)


def _sink(url: str, options: Any) -> RedisStreamSink:
    from ._connectors import RedisStreamSink

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
