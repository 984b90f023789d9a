"""The evidence plugin: a signed in-toto attestation at the end of every stored run.

Inert unless config ``evidence`` turns it on; then ``configure`` loads the signing key
(failing early when it is missing, world-readable or not Ed25519), asks for a run store
and registers a :class:`_Signer` whose ``after_pipeline`` (``trylast``: after the other
plugins closed their part of the run) gathers the ``collect_evidence`` sections, builds
the predicate and writes ``<evidence dir>/<run id>.dsse.json``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # pragma: no cover
    from concurrent.futures import Future, ThreadPoolExecutor

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xlib_pipeline import (
    CliCommand,
    ConfigKey,
    ManagerDecorator,
    StoreError,
    check_keys,
    hookimpl,
)

_SECTION_KEYS = ("enabled", "signing_key_file", "dir")


@attrs.frozen(kw_only=True)
class EvidenceSettings:
    """The ``evidence`` config section."""

    enabled: bool = True
    signing_key_file: str | None = None
    dir: str | None = None


def convert_section(value: Any) -> EvidenceSettings:
    """``true``/``false`` or ``{enabled, signing_key_file, dir}``."""
    if isinstance(value, bool):
        return EvidenceSettings(enabled=value)
    out = check_keys(
        value, _SECTION_KEYS, example="{'signing_key_file': '~/.config/xlib-pipeline/keys/ev.pem'}"
    )
    enabled = out.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"'enabled' must be true or false, got {enabled!r}")
    for k in ("signing_key_file", "dir"):
        v = out.get(k)
        if v is not None and not isinstance(v, str | os.PathLike):
            raise ValueError(f"{k!r} must be a path, got {v!r}")
    return EvidenceSettings(
        enabled=enabled,
        signing_key_file=os.fspath(out["signing_key_file"])
        if out.get("signing_key_file")
        else None,
        dir=os.fspath(out["dir"]) if out.get("dir") else None,
    )


def evidence_dir(store_path: str | os.PathLike[str], configured: str | None = None) -> Path:
    """Where attestations of a store's runs live: ``evidence.dir``, else ``evidence/``
    beside the run store file."""
    if configured:
        return Path(configured).expanduser()
    return Path(store_path).expanduser().absolute().parent / "evidence"


def attestation_file(folder: Path, run_id: str) -> Path:
    """The run-end attestation of ``run_id`` in ``folder``."""
    return folder / f"{run_id}.dsse.json"


def sections_of(manager: Any, run_id: str, run: Any) -> list[Any]:
    """Every plugin's ``collect_evidence`` answer, one section per name, sorted by name
    (the core's hook facade refuses two plugins answering the same name)."""
    sections: list[Any] = manager.hooks.collect_evidence(manager=manager, run_id=run_id, run=run)
    return sections


def statement_for(
    manager: Any,
    run_id: str,
    run: Any,
    *,
    sections: list[Any] | None = None,
    order: list[str] | None = None,
) -> dict[str, Any]:
    """The in-toto Statement v1 of a stored run (store flushed first).

    ``sections`` are the ``collect_evidence`` answers when already gathered (at the end of
    a run, while the run's state is there); ``order`` the task names upstreams first.
    """
    from . import _dsse, _predicate

    store = manager.store
    if store is None:
        raise StoreError("signed evidence needs a run store: configure {'store': true}")
    store.flush()
    rec = store.get_run(run_id)
    tasks = store.get_tasks(rec.run_id)
    events = store.get_events(rec.run_id)
    functions: dict[str, Any] = {}
    if run is not None:
        functions = {t.name: t.fn for t in run.tasks}
    if sections is None:
        sections = sections_of(manager, rec.run_id, run)
    predicate = _predicate.build(
        rec=rec,
        tasks=tasks,
        events=events,
        functions=functions,
        plugins=manager.plugins,
        sections={s.name: dict(s.facts) for s in sections},
        order=order,
    )
    return {
        "_type": _dsse.STATEMENT_TYPE,
        "subject": _predicate.subjects(rec.pipeline, tasks),
        "predicateType": _predicate.PREDICATE_TYPE,
        "predicate": predicate,
    }


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class _Signer:
    """The per-run part, registered only when evidence is on.

    At the end of a run it gathers the plugins' sections (their state is the run's), then
    hands the rest (store reads, predicate, JSON, Ed25519, the file) to one background
    thread, so a run returns without waiting for its attestation. :meth:`wait` (called by
    ``close``, ``pm.compliance_report`` and ``evidence build``) waits for pending ones and
    raises the first failure.
    """

    def __init__(self, plugin: EvidencePlugin, key: Ed25519PrivateKey) -> None:
        self._plugin = plugin
        self._key = key
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()

    @hookimpl(trylast=True)
    def after_pipeline(self, run: Any, result: Any) -> None:
        manager = run.manager
        store = manager.store
        if store is None:
            return
        try:
            store.get_run(run.run_id)
        except StoreError:
            return  # refused before its row was written: nothing stored to attest
        sections = sections_of(manager, run.run_id, run)
        functions = {t.name: t.fn for t in run.tasks}
        order = list(functions)  # definition order: upstreams first
        job = _Job(manager, run.run_id, functions, sections, order)
        with self._lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor  # on the first signed run

                self._pool = ThreadPoolExecutor(1, thread_name_prefix="xlib-evidence")
            self._pending = [f for f in self._pending if not f.done() or f.exception()]
            self._pending.append(self._pool.submit(self._sign, job))

    def _sign(self, job: _Job) -> None:
        from . import _dsse

        statement = statement_for(
            job.manager, job.run_id, job, sections=job.sections, order=job.order
        )
        envelope = _dsse.sign(statement, self._key)
        folder = evidence_dir(job.manager.store.path, self._plugin.settings.dir)
        write_json(attestation_file(folder, job.run_id), envelope)

    def wait(self) -> None:
        """Wait for every pending attestation; raise the first that failed."""
        with self._lock:
            pending, self._pending = self._pending, []
        errors = [f.exception() for f in pending]
        for err in errors:
            if err is not None:
                raise StoreError(f"signing a run attestation failed: {type(err).__name__}: {err}")

    @hookimpl
    def close(self, manager: Any) -> None:
        try:
            self.wait()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True)


class _Job:
    """What the background signer needs of a finished run (a stand-in for its context)."""

    def __init__(
        self,
        manager: Any,
        run_id: str,
        functions: dict[str, Any],
        sections: list[Any],
        order: list[str],
    ) -> None:
        self.manager = manager
        self.run_id = run_id
        self.sections = sections
        self.order = order
        self.tasks = tuple(_Fn(n, f) for n, f in functions.items())


class _Fn:
    __slots__ = ("fn", "name")

    def __init__(self, name: str, fn: Any) -> None:
        self.name = name
        self.fn = fn


class EvidencePlugin:
    """Signed run attestations, evidence packs and ``pm.compliance_report``."""

    name = "evidence"

    def __init__(self) -> None:
        self.settings = EvidenceSettings(enabled=False)
        self.key_file: Path | None = None
        self.key: Ed25519PrivateKey | None = None
        self.signer: _Signer | None = None

    def wait(self) -> None:
        """Wait until the attestations of runs that ended are written."""
        if self.signer is not None:
            self.signer.wait()

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="evidence",
                convert=convert_section,
                doc="Signed run evidence: true, or {enabled, signing_key_file, dir}. "
                "signing_key_file is an Ed25519 PEM key (xlib-pipeline evidence keygen), "
                "default $XLIB_PIPELINE_KEYS_DIR/evidence-signing.pem; dir is where run "
                "attestations go, default evidence/ beside the run store.",
            ),
        )

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        return (
            CliCommand(
                name="evidence",
                help="signed run evidence: keygen, build a pack, verify a pack offline",
                add_arguments=_cli_arguments,
                run=_cli_run,
            ),
        )

    @hookimpl
    def register_manager_decorators(self) -> Iterable[ManagerDecorator]:
        return (
            ManagerDecorator(
                name="compliance_report",
                factory=_compliance_report,
                doc="pm.compliance_report(run_id): the signed facts of a stored run "
                "(what run.json of its evidence pack holds), as typed objects.",
            ),
        )

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        if not config.given("evidence"):
            return
        from . import _keys

        settings: EvidenceSettings = config.get("evidence")
        self.settings = settings
        self.key_file = (
            Path(settings.signing_key_file).expanduser().absolute()
            if settings.signing_key_file
            else _keys.default_key_file()
        )
        if not settings.enabled:
            return
        _keys.check_location(self.key_file)
        if settings.signing_key_file is None and not self.key_file.exists():
            _keys.create_default(self.key_file)
        self.key = _keys.load_private(self.key_file)
        manager.require_store("evidence")
        self.signer = _Signer(self, self.key)
        manager.register(self.signer, name="evidence.signer")


def _compliance_report(manager: Any, run_id: str, *, public_key: Any = None) -> Any:
    from ._report import compliance_report

    return compliance_report(manager, run_id, public_key=public_key)


def settings_of(manager: Any) -> EvidenceSettings:
    """The evidence settings of ``manager`` (defaults when the plugin is absent)."""
    plugin = manager.get_plugin("evidence")
    return plugin.settings if plugin is not None else EvidenceSettings(enabled=False)


def public_key_of(manager: Any) -> Any:
    """The public half of the manager's signing key (``None`` when none is configured)."""
    from . import _dsse, _keys

    plugin = manager.get_plugin("evidence")
    if plugin is None:
        return None
    if plugin.key is not None:
        return plugin.key.public_key()
    file = plugin.key_file or _keys.default_key_file()
    pub = _keys.public_file_of(Path(file))
    if pub.exists():
        return _dsse.load_public_pem(pub.read_bytes(), str(pub))
    if Path(file).exists():
        return _keys.load_private(file).public_key()
    return None


def _cli_arguments(parser: Any) -> None:
    """The command's arguments (its module is imported when the command is chosen)."""
    from ._cli import _add_arguments

    _add_arguments(parser)


def _cli_run(args: Any) -> int:
    from ._cli import _run

    return int(_run(args))
