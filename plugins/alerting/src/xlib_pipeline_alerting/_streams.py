"""Alerts on streams: ``stream_failed`` when a stream ends failed, ``stream_lag`` when a
committed batch reports its source's lag above a threshold.

Registered by ``configure`` only when a stream rule is set: otherwise a stream's batches
pay nothing for alerting. The firing stream alerts are kept in the plugin's state file
(under the stream's pipeline, with their stream), read once when a stream starts, so
that a restarted stream, even in a new process, sends the resolved notifications: a
``stream_failed`` alert is resolved by the stream's next committed batch, a ``stream_lag``
alert by a committed batch whose lag is back at or under the threshold. A stream's
alerts are never resolved by a run of its pipeline succeeding (each batch is a run).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from xlib_pipeline import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from ._plugin import AlertingPlugin
    from ._settings import Rule

_log = logging.getLogger("xlib_pipeline.alerting")


def _lag_key(pipeline: str, stream: str, rule: Rule) -> str:
    return f"{pipeline}/stream:{stream}/stream_lag>{rule.above:g}"


def _failed_key(pipeline: str, stream: str) -> str:
    return f"{pipeline}/stream:{stream}/stream_failed"


class StreamAlerts:
    """The ``stream_event`` hook of the alerting plugin."""

    def __init__(self, plugin: AlertingPlugin, rules: tuple[Rule, ...]) -> None:
        self.plugin = plugin
        self.rules = rules
        self._match: dict[tuple[str, str], tuple[Rule, ...]] = {}
        #: stream name -> dedup keys of its alerts firing (from the state file at start)
        self._firing: dict[str, set[str]] = {}
        #: stream name -> the run of its last committed batch (a failed batch's run differs)
        self._committed: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def _rules_for(self, pipeline: str, stream: str) -> tuple[Rule, ...]:
        key = (pipeline, stream)
        hit = self._match.get(key)
        if hit is None:
            hit = self._match[key] = tuple(
                r for r in self.rules if r.matches_stream(pipeline, stream)
            )
        return hit

    @hookimpl
    def stream_event(self, stream: Any, event: str, info: Any) -> None:
        pipeline, name = str(stream.pipeline.name), str(stream.name)
        rules = self._rules_for(pipeline, name)
        if not rules:
            return
        if event == "started":
            self._started(pipeline, name)
        elif event == "batch":
            self._batch(stream, pipeline, name, rules, info)
        elif event == "failed":
            self._failed(stream, pipeline, name, rules, info)

    def _started(self, pipeline: str, name: str) -> None:
        firing: set[str] = set()
        p = self.plugin
        if p.state is not None and p.settings is not None and p.settings.resolve:
            try:
                firing = p.state.peek(pipeline, name)
            except OSError as exc:
                _log.error("alerting: cannot read firing alerts from %s: %s", p.state.path, exc)
        with self._lock:
            self._firing[name] = firing
            self._committed.pop(name, None)

    def _batch(
        self, stream: Any, pipeline: str, name: str, rules: tuple[Rule, ...], info: Any
    ) -> None:
        seq, run_id = info.get("seq"), info.get("run_id")
        lag = info.get("lag")
        known = isinstance(lag, int | float) and not isinstance(lag, bool)
        resolve: dict[str, str] = {}  # dedup key -> the resolved notification's message
        fire: list[Rule] = []
        with self._lock:
            self._committed[name] = run_id
            firing = self._firing.setdefault(name, set())
            failed = _failed_key(pipeline, name)
            if failed in firing:
                firing.discard(failed)
                resolve[failed] = f"the stream committed batch {seq} (run {run_id})"
            for rule in rules:
                if rule.on != "stream_lag" or not known:
                    continue
                assert rule.above is not None
                key = _lag_key(pipeline, name, rule)
                if lag > rule.above and key not in firing:
                    firing.add(key)
                    fire.append(rule)
                elif lag <= rule.above and key in firing:
                    firing.discard(key)
                    resolve[key] = f"lag {lag:g} at batch {seq}, at or under {rule.above:g}"
        for rule in fire:
            assert rule.above is not None
            self.plugin.emit(
                rule,
                pipeline=pipeline,
                stream=name,
                batch=seq,
                run_id=run_id,
                threshold=rule.above,
                tenant=_tenant(stream),
                error_class="StreamLag",
                message=f"lag {lag:g} above {rule.above:g} (the source's unit) at batch {seq}",
            )
        if resolve:
            self._resolve(pipeline, name, resolve, run_id, seq)

    def _failed(
        self, stream: Any, pipeline: str, name: str, rules: tuple[Rule, ...], info: Any
    ) -> None:
        rules = tuple(r for r in rules if r.on == "stream_failed")
        if not rules:
            return
        err = stream.error
        cls = type(err).__name__ if err is not None else None
        # The core's text: redacted (PII) and, for a sealed batch error, the pointer to
        # its run instead of the text. emit() redacts it again and cuts it to length.
        message = str(info.get("error") or "")
        if cls and message.startswith(f"{cls}: "):
            message = message[len(cls) + 2 :]
        ckpt = getattr(stream, "checkpoint", None)
        batch = (ckpt.seq if ckpt is not None else 0) + 1  # the first batch not committed
        with self._lock:
            committed = self._committed.get(name)
            self._firing.setdefault(name, set()).add(_failed_key(pipeline, name))
        last = stream.last_run_id
        for rule in rules:
            self.plugin.emit(
                rule,
                pipeline=pipeline,
                stream=name,
                batch=batch,
                run_id=last if last != committed else None,  # the failed batch's run
                tenant=_tenant(stream),
                error_class=cls,
                message=message,
            )

    def _resolve(
        self, pipeline: str, name: str, keys: dict[str, str], run_id: Any, seq: Any
    ) -> None:
        p = self.plugin
        if p.state is not None and p.settings is not None and p.settings.resolve:
            p.resolve(pipeline, run_id, stream=name, batch=seq, messages=keys)


def _tenant(stream: Any) -> str | None:
    tenant = stream.run_kwargs.get("tenant_id")
    return None if tenant is None else str(tenant)
