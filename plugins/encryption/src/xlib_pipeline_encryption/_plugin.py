"""The encryption plugin: config keys, ``pm.encrypt_data``, the ``encrypt``/``decrypt`` hooks."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from xlib_pipeline import (
    ENCRYPTED_MAGIC,
    CliCommand,
    ConfigError,
    ConfigKey,
    EvidenceSection,
    ManagerDecorator,
    PayloadRef,
    RunContext,
    SecurityError,
    StashKey,
    TaskOption,
    boolean,
    check_tenant_id,
    hookimpl,
    with_options,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._envelope import Envelope
    from ._keyring import KeyManagementService
    from ._sealing import Sealing
    from ._stream import Opener, Sealer

# The plugin is loaded by every PipelineManager() through its entry point: the keyring and
# envelope modules (attrs classes) are imported when a key is configured or data sealed or
# read, ._stream (cryptography's AEAD) when a blob is sealed or opened.

_log = logging.getLogger("xlib_pipeline.encryption")

#: Task -> master key id of the outputs this run sealed (for the run's evidence section).
SEALED_KEYS: StashKey[dict[str, str]] = StashKey("encryption.sealed_keys")


_bool = boolean

#: During a stream (a run whose params hold ``"stream"``), the key file is checked for
#: changes at most once per this many seconds, not at every micro-batch.
STREAM_KEY_CHECK = 1.0
_clock = time.monotonic


def _keyring_spec(value: Any) -> Any:
    """``{"env": VAR}``, ``{"file": PATH}``, a path string, or a KMS object."""
    from ._keyring import KeyManagementService

    if isinstance(value, KeyManagementService) and not isinstance(value, Mapping):
        return value
    if isinstance(value, str | os.PathLike):
        return {"file": os.fspath(value)}
    if isinstance(value, Mapping):
        if "kms" in value and len(value) == 1:
            kms = value["kms"]
            if not isinstance(kms, KeyManagementService):
                raise ValueError(
                    "keyring {'kms': obj}: obj must implement active_key_id, wrap() and unwrap() "
                    "(see xlib_pipeline_encryption.KeyManagementService)"
                )
            return kms
        if len(value) == 1 and ("env" in value or "file" in value):
            v = next(iter(value.values()))
            if not isinstance(v, str | os.PathLike) or not os.fspath(v):
                raise ValueError(f"keyring {dict(value)!r}: expected a non-empty name or path")
            return {k: os.fspath(v) for k, v in value.items()}
    raise ValueError(
        f"expected {{'env': 'XLIB_PIPELINE_KEYS'}}, {{'file': PATH}} or {{'kms': obj}}, "
        f"got {value!r}"
    )


class EncryptionPlugin:
    """AES-256-GCM envelope encryption of stored task outputs (see docs/plugins/encryption.md).

    Pass ``kms=`` to use your own :class:`KeyManagementService` instead of a keyring:
    ``PipelineManager(config, plugins=[EncryptionPlugin(kms=MyKms())])``.
    """

    name = "encryption"

    def __init__(self, kms: KeyManagementService | None = None) -> None:
        self._kms_override = kms
        self._lock = threading.Lock()
        self._kms: KeyManagementService | None = None
        self._kms_stamp: Any = None
        #: time.monotonic() of the key file's last check (a stream re-checks it at most
        #: once per STREAM_KEY_CHECK seconds)
        self._kms_checked = float("-inf")
        self.at_rest = False
        self.in_transit = False
        self.allow_plaintext = False
        self._spec: Any = None
        self._marked: set[tuple[str, str]] = set()
        #: run id -> task -> master key id of the outputs sealed in that run (evidence)
        self._seen: dict[str, dict[str, str]] = {}
        #: (a run's tasks, the names of those marked ``encrypt``) of the last run checked
        self._last_marked: tuple[tuple[Any, ...], tuple[str, ...]] | None = None
        self._per_run_keys = False
        self._envelope: Envelope | None = None
        self._sealing: Sealing | None = None
        #: pipeline -> (its tasks when scanned, whether a task is marked ``encrypt``)
        self._scanned: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], bool]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def envelope(self) -> Envelope:
        """Seals and opens payloads under the master keys (built on first use)."""
        found = self._envelope
        if found is None:
            from ._envelope import Envelope

            with self._lock:
                found = self._envelope
                if found is None:
                    found = self._envelope = Envelope(self.kms, per_run_keys=self._per_run_keys)
        return found

    # -- collectors --------------------------------------------------------------------------

    @hookimpl
    def register_config_keys(self) -> Iterable[ConfigKey]:
        return (
            ConfigKey(
                name="encryption.keyring",
                convert=_keyring_spec,
                doc="Master keys: {'env': VAR}, {'file': PATH} or {'kms': obj}.",
            ),
            ConfigKey(
                name="encryption.per_run_keys",
                convert=_bool,
                default=False,
                doc="A fresh data key per tenant and run (default: per tenant).",
            ),
            ConfigKey(
                name="encryption.allow_plaintext_reads",
                convert=_bool,
                default=False,
                doc="Accept unencrypted stored outputs of tasks that require encryption "
                "(e.g. runs stored before encryption was turned on).",
            ),
            ConfigKey(
                name="security.encryption_at_rest",
                convert=_bool,
                default=False,
                doc="Encrypt every stored task output.",
            ),
            ConfigKey(
                name="security.encryption_in_transit",
                convert=_bool,
                default=False,
                doc="Require TLS on network transports (the dask plugin enforces it).",
            ),
        )

    @hookimpl
    def register_task_options(self) -> Iterable[TaskOption]:
        return (
            TaskOption(
                name="encrypt",
                convert=_bool,
                doc="Encrypt this task's stored output under its tenant's data key.",
            ),
        )

    @hookimpl
    def register_manager_decorators(self) -> Iterable[ManagerDecorator]:
        return (
            ManagerDecorator(
                name="encrypt_data",
                factory=encrypt_data,
                doc="pm.encrypt_data(tenant_id=...): encrypt the task's stored output.",
            ),
        )

    @hookimpl
    def register_cli_commands(self) -> Iterable[CliCommand]:
        return (
            CliCommand(
                name="keys",
                help="manage encryption master keys (generate, add, list, rotate, shred)",
                add_arguments=_cli_arguments,
                run=_cli_run,
            ),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    def configure(self, manager: Any, config: Any) -> None:
        self.at_rest = bool(config.get("security.encryption_at_rest"))
        self.in_transit = bool(config.get("security.encryption_in_transit"))
        self.allow_plaintext = bool(config.get("encryption.allow_plaintext_reads"))
        self._spec = config.get("encryption.keyring")
        self._per_run_keys = bool(config.get("encryption.per_run_keys"))
        self._envelope = None
        self._manager_ref = weakref.ref(manager)
        if self.at_rest:  # nothing is encrypted unless runs are stored
            manager.require_store("security.encryption_at_rest")
            self._activate(manager)

    @hookimpl
    def prepare_run(
        self, manager: Any, pipeline: Any, tasks: tuple[Any, ...], options: Any
    ) -> None:
        """A task marked ``encrypt`` turns sealing on (once per pipeline version: the core
        passes the same ``tasks`` tuple to every run of it, so nothing is scanned again)."""
        if self._sealing is not None:
            return
        seen = self._scanned.get(pipeline)
        if seen is None or seen[0] is not tasks:
            seen = (tasks, any(t.options.get("encrypt") for t in tasks))
            self._scanned[pipeline] = seen
        if seen[1]:
            self._activate(manager)

    def _activate(self, manager: Any) -> None:
        """Register the sealing hooks (idempotent): unconfigured, the plugin has no per-run
        or per-output hook but ``decrypt`` (stored ciphertexts stay readable)."""
        with self._lock:
            if self._sealing is None:
                from ._sealing import Sealing

                sealing = Sealing(self)
                manager.register(sealing, name="encryption.sealing")
                self._sealing = sealing

    def _store(self) -> Any:
        ref = getattr(self, "_manager_ref", None)
        manager = ref() if ref is not None else None
        try:
            return manager.store if manager is not None else None
        except Exception:  # no usable store: nothing stored to protect
            return None

    @property
    def active(self) -> bool:
        """Whether anything is encrypted: at-rest on, or tasks marked with ``encrypt``."""
        return self.at_rest or bool(self._marked)

    def kms(self, *, recheck_after: float = 0.0) -> KeyManagementService:
        """The master keys in use (loaded on first use; a key file is re-read when it changed).

        With ``recheck_after`` (seconds), keys loaded or checked less than that long ago are
        returned without looking at the key file again (a stream's batches: see
        ``STREAM_KEY_CHECK``).
        """
        if self._kms_override is not None:
            return self._kms_override
        spec = self._spec
        if not isinstance(spec, Mapping) and spec is not None:
            given: KeyManagementService = spec  # a KMS object from config
            return given
        kms = self._kms
        now = _clock()
        if kms is not None and now - self._kms_checked < recheck_after:
            return kms
        stamp = key_file_stamp(spec)
        if kms is not None and stamp == self._kms_stamp:
            self._kms_checked = now
            return kms
        with self._lock:
            if self._kms is None or stamp != self._kms_stamp:
                old = self._kms
                new: KeyManagementService | None
                if spec is None:
                    from ._defaults import default_keyring

                    new = default_keyring(create=True, store=self._store())
                    stamp = key_file_stamp(None)
                else:
                    from ._keyring import Keyring

                    new = Keyring.load(spec)
                assert new is not None
                self._kms, self._kms_stamp = new, stamp
                self._kms_checked = now
                changed = old is not None and old.active_key_id != new.active_key_id
                if changed and self._envelope is not None:
                    self._envelope.reset()
            return self._kms

    def _marked_in(self, tasks: tuple[Any, ...]) -> tuple[str, ...]:
        """The tasks marked ``encrypt`` among ``tasks`` (read once per pipeline version: the
        core passes the same ``tasks`` tuple to every run of it)."""
        last = self._last_marked
        if last is None or last[0] is not tasks:
            last = (tasks, tuple(t.name for t in tasks if t.options.get("encrypt")))
            self._last_marked = last
        return last[1]

    def validate_pipeline(self, pipeline: Any, run: RunContext) -> None:
        marked = self._marked_in(run.tasks)
        if marked:  # encrypt=... (pm.encrypt_data) means: store this output, encrypted
            run.manager.require_store(f"the encrypt option of task {marked[0]!r}")

    def before_pipeline(self, run: RunContext) -> None:
        last = self._last_marked  # _marked_in, without the call for the same tasks
        marked = (
            last[1] if last is not None and last[0] is run.tasks else self._marked_in(run.tasks)
        )
        if marked:
            name = run.pipeline_name
            stream = run.params.get("stream")
            with self._lock:
                self._marked.update((name, t) for t in marked)
                if isinstance(stream, Mapping):
                    # A stream's own copy of its output and its window state hold the
                    # marked tasks' records: they are sealed too (ref task "stream:NAME").
                    self._marked.add((name, f"stream:{stream.get('name')}"))
        if (self.at_rest or marked) and run.manager.store is not None:
            # Fail before anything runs when the keyring is unusable. A plain run looks at
            # the key file every time; a stream's batch at most once per STREAM_KEY_CHECK
            # seconds (its os.stat cost ~30-50 us CPU per batch in a running stream).
            self.kms(recheck_after=STREAM_KEY_CHECK if "stream" in run.params else 0.0)
            self._seen[run.run_id] = {}

    def after_pipeline(self, run: RunContext, result: Any) -> None:
        env = self._envelope
        if env is not None and env.per_run_keys:  # else forget_run has nothing to forget
            env.forget_run(run.run_id)
        seen = self._seen.pop(run.run_id, None)
        if seen is not None:
            run.stash[SEALED_KEYS] = seen

    @hookimpl
    def collect_evidence(
        self, manager: Any, run_id: str, run: RunContext | None
    ) -> EvidenceSection | None:
        """The master key id protecting each stored output of the run (never a key).

        At the end of a run: the key ids noted as outputs were sealed (a resumed run's
        carried outputs are read from the store); when a pack is built: read from the store,
        naming the outputs crypto-shredded since (their attested digests remain).
        """
        store = manager.store
        if store is None:
            return None
        keys: dict[str, str] = {}
        gone: list[str] = []
        seen = run.stash.get(SEALED_KEYS, None) if run is not None else None
        resumed = run is not None and run.resumed_from is not None
        if seen is not None and not resumed:
            keys = dict(sorted(seen.items()))
        stored = store.get_tasks(run_id).items() if seen is None or resumed else ()
        from ._envelope import is_shredded, key_id_of

        for name, tr in sorted(stored):
            blob = tr.output
            if blob is not None and is_shredded(bytes(blob)):
                gone.append(name)
                continue
            kid = key_id_of(bytes(blob)) if blob is not None else None
            if kid is not None:
                keys[name] = kid
        if not keys and not gone and not (self.at_rest or self._marked):
            return None
        return EvidenceSection(
            name="encryption",
            facts={
                "algorithm": "AES-256-GCM envelope",
                "keys": keys,
                "keyIds": sorted(set(keys.values())),
                "perRunKeys": bool(self.envelope.per_run_keys),
                **({"shredded": gone} if gone else {}),
            },
        )

    def requires(self, ref: PayloadRef) -> bool:
        """Whether the payload ``ref`` names must be stored encrypted."""
        return self.at_rest or (ref.pipeline, ref.task) in self._marked

    # -- providers ---------------------------------------------------------------------------

    def encrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        if not (self.at_rest or (ref.pipeline, ref.task) in self._marked):
            return None
        blob, kid = (self._envelope or self.envelope).seal_noting_key(data, ref)
        if ref.kind == "output":
            seen = self._seen.get(ref.run_id)
            if seen is not None:
                seen[ref.task] = kid or "?"
        return blob

    @hookimpl
    def decrypt(self, data: bytes, ref: PayloadRef) -> bytes | None:
        if data.startswith(ENCRYPTED_MAGIC):
            return self.envelope.open(data, ref)
        if not self.allow_plaintext and self.requires(ref):
            raise SecurityError(
                f"the stored {ref.kind} of task {ref.task!r} (run {ref.run_id}) is not "
                "encrypted although encryption is required for it; refusing to read it "
                "(set encryption.allow_plaintext_reads to accept runs stored before "
                "encryption was turned on)"
            )
        return None

    def encrypt_stream(self, ref: PayloadRef) -> Sealer | None:
        """A STREAM sealer for a large output going to the blob store (see ``_stream``)."""
        if not (self.at_rest or (ref.pipeline, ref.task) in self._marked):
            return None
        from ._stream import Sealer, scope_for

        return Sealer(self.kms(), ref, scope_for(ref, self.envelope.per_run_keys))

    @hookimpl
    def decrypt_stream(self, header: bytes, ref: PayloadRef) -> Opener | None:
        if header.startswith(ENCRYPTED_MAGIC):
            from ._stream import Opener

            return Opener(self.kms, header, ref)
        if not self.allow_plaintext and self.requires(ref):
            raise SecurityError(
                f"the stored {ref.kind} of task {ref.task!r} (run {ref.run_id}) is a blob "
                "that is not encrypted although encryption is required for it; refusing to "
                "read it (set encryption.allow_plaintext_reads to accept runs stored before "
                "encryption was turned on)"
            )
        return None

    def rewrap(self, data: bytes, ref: PayloadRef) -> bytes | None:
        """Re-wrap a stored ciphertext's data key under the active master key (rotation)."""
        if not data.startswith(ENCRYPTED_MAGIC):
            return None
        return self.envelope.rewrap(data, ref)


def key_file_stamp(spec: Any) -> Any:
    """The key file's stamp (``_keyfile`` is imported when a keyring is first used)."""
    from ._keyfile import key_file_stamp as stamp

    return stamp(spec)


def encrypt_data(
    manager: Any, fn: Callable[..., Any] | None = None, *, tenant_id: str | None = None
) -> Any:
    """``pm.encrypt_data(tenant_id=...)``: store the task's output encrypted under the
    tenant's data key. Stack it directly under ``@pipeline.task``."""
    if tenant_id is not None:
        try:
            check_tenant_id(tenant_id, what="pm.encrypt_data(tenant_id=...)")
        except ValueError as exc:
            raise ConfigError(str(exc), key="tenant_id") from exc
    options: dict[str, Any] = {"encrypt": True}
    if tenant_id is not None:
        options["tenant_id"] = tenant_id

    def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
        return with_options(f, options)

    return decorator(fn) if fn is not None else decorator


def _cli_arguments(parser: Any) -> None:
    """The command's arguments (its module is imported when the command is chosen)."""
    from ._cli import _add_arguments

    _add_arguments(parser)


def _cli_run(args: Any) -> int:
    from ._cli import _run

    return int(_run(args))
