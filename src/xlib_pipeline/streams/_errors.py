"""Errors of stream processing."""

from __future__ import annotations

from ..exceptions import PipelineError


class StreamError(PipelineError):
    """A stream cannot go on: a source, sink or checkpoint problem (named in the message).

    Everything committed before it stays committed; restarting the stream continues
    after the last checkpoint.
    """
