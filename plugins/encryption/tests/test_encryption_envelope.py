"""Envelope encryption through the encrypt/decrypt hooks (no run store needed)."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xlib_pipeline_encryption import (
    EncryptionPlugin,
    Keyring,
    add_key,
    generate_key_file,
    key_id_of,
    new_master_key,
)

from xlib_pipeline import (
    ENCRYPTED_MAGIC,
    ConfigError,
    PayloadRef,
    Pipeline,
    PipelineManager,
    SecurityError,
)

AT_REST = {"security": {"encryption_at_rest": True}}


def manager(kms=None, config=AT_REST) -> PipelineManager:
    return PipelineManager(config, plugins=[EncryptionPlugin(kms=kms)] if kms else ())


def ref(task="t", tenant="acme", run_id="run-1", pipeline="p", kind="output") -> PayloadRef:
    return PayloadRef(run_id=run_id, pipeline=pipeline, task=task, tenant=tenant, kind=kind)


def enc(pm, data, r):
    return pm.hooks.encrypt(data=data, ref=r)


def dec(pm, data, r):
    return pm.hooks.decrypt(data=data, ref=r)


RING = Keyring([new_master_key()], source="test")
PM = PipelineManager(AT_REST, plugins=[EncryptionPlugin(kms=RING)])


class TestRoundTrip:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        data=st.binary(max_size=4096),
        tenant=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
        task=st.text(min_size=1, max_size=30),
        run_id=st.text(min_size=1, max_size=36),
    )
    def test_any_payload_round_trips(self, data, tenant, task, run_id):
        """Bytes of any length for any tenant, task and run decrypt to themselves."""
        r = ref(task=task, tenant=tenant, run_id=run_id)
        ct = enc(PM, data, r)
        assert ct.startswith(ENCRYPTED_MAGIC)
        assert ct != data
        assert dec(PM, ct, r) == data

    def test_large_payload(self):
        """A 5 MiB payload round-trips."""
        data = os.urandom(5 * 1024 * 1024)
        assert dec(PM, enc(PM, data, ref()), ref()) == data

    def test_header_names_key_not_material(self):
        """The header carries the master key id, never the key."""
        ct = enc(PM, b"x", ref())
        assert key_id_of(ct) == RING.active_key_id
        assert ct[6] == 1  # format version


# Forked in a fresh interpreter: the suite's process may hold other tests' threads, and since
# 3.12 ``os.fork`` in a multi-threaded process warns (DeprecationWarning) and can deadlock.
_FORK_NONCES = """
import os
import threading

from xlib_pipeline_encryption import _envelope

_envelope._NONCES.take()  # the pool holds unused nonces now
assert threading.active_count() == 1, threading.enumerate()  # a clean fork
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.write(w, b"".join(_envelope._NONCES.take() for _ in range(8)))
    finally:
        os._exit(0)
os.close(w)
child = b""
while len(child) < 96:
    part = os.read(r, 96)
    if not part:
        break
    child += part
os.close(r)
os.waitpid(pid, 0)
print(child.hex())
print(b"".join(_envelope._NONCES.take() for _ in range(8)).hex())
"""


class TestBinding:
    @pytest.mark.parametrize(
        "moved",
        [
            {"task": "other_task"},
            {"run_id": "run-2"},
            {"tenant": "globex"},
            {"tenant": None},
            {"pipeline": "other"},
            {"kind": "input"},
        ],
    )
    def test_moved_ciphertext_fails_clearly(self, moved):
        """A ciphertext presented for another run, task, tenant or pipeline is refused."""
        secret = b"PATIENT-RECORD-4242"
        ct = enc(PM, secret, ref())
        target = ref(**moved)
        with pytest.raises(SecurityError) as info:
            dec(PM, ct, target)
        msg = str(info.value)
        assert repr(target.task) in msg
        if target.tenant:
            assert repr(target.tenant) in msg
        assert "PATIENT" not in msg
        for key_id in RING.key_ids:
            material = RING._keys[key_id].material
            assert base64.b64encode(material).decode() not in msg
            assert material.hex() not in msg

    def test_tampered_ciphertext(self):
        """Flipping one byte of the body fails authentication."""
        ct = bytearray(enc(PM, b"hello world", ref()))
        ct[-3] ^= 1
        with pytest.raises(SecurityError, match="failed authentication"):
            dec(PM, bytes(ct), ref())

    def test_truncated_ciphertext(self):
        """A truncated blob is named as truncated, not a crash."""
        ct = enc(PM, b"hello world", ref())
        with pytest.raises(SecurityError, match="truncated"):
            dec(PM, ct[:20], ref())

    def test_unknown_version(self):
        """A future format version is refused with a message to upgrade."""
        ct = bytearray(enc(PM, b"hello", ref()))
        ct[6] = 9
        with pytest.raises(SecurityError, match="version 9"):
            dec(PM, bytes(ct), ref())

    def test_no_plaintext_marker_in_ciphertext(self):
        """A recognisable marker in the plaintext never appears in the ciphertext."""
        marker = b"MARKER-7f3a-PLAINTEXT"
        ct = enc(PM, marker * 50, ref())
        assert marker not in ct
        assert marker[:8] not in ct

    def test_nonces_are_fresh(self):
        """Encrypting the same bytes twice gives different ciphertexts."""
        assert enc(PM, b"same", ref()) != enc(PM, b"same", ref())

    def test_nonces_are_unique_across_threads_and_refills(self):
        """Threads taking nonces at once (across several refills of the pool) never get
        the same one, and each is 12 bytes."""
        import threading

        from xlib_pipeline_encryption._envelope import _NoncePool

        pool = _NoncePool()
        pool._COUNT = 64  # refill often
        got: list[list[bytes]] = [[] for _ in range(8)]

        def take(out: list[bytes]) -> None:
            for _ in range(2000):
                out.append(pool.take())

        threads = [threading.Thread(target=take, args=(out,)) for out in got]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        every = [n for out in got for n in out]
        assert len(set(every)) == len(every) == 16_000
        assert {len(n) for n in every} == {12}

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
    def test_a_forked_child_never_reuses_the_parents_nonces(self):
        """The child drops the pool it inherited: its nonces are not the parent's next."""
        done = subprocess.run(
            [sys.executable, "-c", _FORK_NONCES],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        child, parent = (bytes.fromhex(line) for line in done.stdout.split())
        assert len(child) == len(parent) == 96
        assert not {child[i : i + 12] for i in range(0, 96, 12)} & {
            parent[i : i + 12] for i in range(0, 96, 12)
        }

    def test_the_noted_key_id_is_the_ciphertexts(self):
        """seal_noting_key names the master key the ciphertext's header names."""
        pm = manager(RING)
        envelope = pm.get_plugin("encryption").envelope
        blob, kid = envelope.seal_noting_key(b"data", ref())
        assert kid == key_id_of(blob) == RING.active_key_id
        assert dec(pm, blob, ref()) == b"data"

    def test_plaintext_refused_when_required(self):
        """An unencrypted blob where encryption is required is refused (no downgrade)."""
        with pytest.raises(SecurityError, match="not encrypted"):
            dec(PM, b"plain", ref())
        lax = manager(RING, {**AT_REST, "encryption": {"allow_plaintext_reads": True}})
        assert dec(lax, b"plain", ref()) == b"plain"


class TestKeyFiles:
    def test_generate_makes_0600_file_and_refuses_overwrite(self, tmp_path):
        """keys generate writes mode 0600 and never overwrites."""
        path = tmp_path / "k" / "ring.json"
        key = generate_key_file(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["keys"][0]["id"] == key.id
        before = path.read_bytes()
        with pytest.raises(ConfigError, match="already exists"):
            generate_key_file(path)
        assert path.read_bytes() == before

    def test_world_readable_key_file_refused(self, tmp_path):
        """A key file other users can read is refused, naming the file."""
        path = tmp_path / "ring.json"
        generate_key_file(path)
        os.chmod(path, 0o644)
        with pytest.raises(SecurityError, match="chmod 600"):
            Keyring.from_file(path)

    def test_repr_hides_material(self):
        """Neither a master key's nor a keyring's repr shows key material."""
        key = new_master_key()
        assert key.material.hex() not in repr(key)
        assert "material" not in repr(key)
        ring = Keyring([key], source="x")
        assert key.material.hex() not in repr(ring)

    def test_env_keyring_compact_and_json(self, tmp_path, monkeypatch):
        """{"env": VAR} reads 'id:base64' lists and key-file JSON."""
        a, b = new_master_key(), new_master_key()
        compact = ",".join(f"{k.id}:{base64.b64encode(k.material).decode()}" for k in (a, b))
        monkeypatch.setenv("XLIB_PIPELINE_KEYS", compact)
        pm = manager(config={**AT_REST, "encryption": {"keyring": {"env": "XLIB_PIPELINE_KEYS"}}})
        ct = enc(pm, b"data", ref())
        assert key_id_of(ct) == b.id  # the last key is active
        path = tmp_path / "ring.json"
        generate_key_file(path)
        monkeypatch.setenv("XLIB_PIPELINE_KEYS", path.read_text())
        pm2 = manager(config={**AT_REST, "encryption": {"keyring": {"env": "XLIB_PIPELINE_KEYS"}}})
        assert dec(pm2, enc(pm2, b"data", ref()), ref()) == b"data"

    def test_missing_env_var_is_a_clear_error(self, tmp_path):
        """An unset keyring variable fails before any task runs, naming the variable."""
        cfg = {**AT_REST, "encryption": {"keyring": {"env": "NOPE_KEYS"}}}
        pm = manager(config={**cfg, "store": {"path": str(tmp_path / "runs.sqlite")}})
        p = Pipeline("p")
        p.task("a")(lambda: 1)
        with pytest.raises(ConfigError, match="NOPE_KEYS"):
            pm.execute_pipeline(p)

    def test_bad_keyring_config(self):
        """A malformed keyring spec is a config error naming the key."""
        with pytest.raises(ConfigError, match=r"encryption\.keyring"):
            PipelineManager({"encryption": {"keyring": {"vault": "x"}}})
        with pytest.raises(ConfigError, match="per_run_key"):
            PipelineManager({"encryption": {"per_run_key": True}})


class TestDefaultKeyFile:
    def test_created_outside_data_dir_with_0600_and_warns_once(self, tmp_path, caplog):
        """at-rest without a keyring creates a 0600 key file under XLIB_PIPELINE_KEYS_DIR."""
        caplog.set_level(logging.WARNING, logger="xlib_pipeline")
        pm = manager()
        enc(pm, b"x", ref())
        file = tmp_path / "keys" / "master-keys.json"
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
        assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
        created = [r for r in caplog.records if "key_file_created" in r.getMessage()]
        assert len(created) == 1 and str(file) in created[0].getMessage()
        pm2 = manager()
        assert dec(pm2, enc(pm2, b"y", ref()), ref()) == b"y"
        created = [r for r in caplog.records if "key_file_created" in r.getMessage()]
        assert len(created) == 1
        assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*key*"))

    def test_refuses_key_dir_inside_data_dir(self, tmp_path, monkeypatch):
        """The default key folder may never sit inside the data folder."""
        monkeypatch.setenv("XLIB_PIPELINE_KEYS_DIR", str(tmp_path / "home" / "keys"))
        with pytest.raises(ConfigError, match="beside the data"):
            enc(manager(), b"x", ref())

    def test_inert_without_config(self, tmp_path):
        """A plain manager passes bytes through and creates no key file."""
        pm = PipelineManager()
        assert enc(pm, b"plain", ref()) == b"plain"
        assert dec(pm, b"plain", ref()) == b"plain"
        assert not (tmp_path / "keys").exists()


class TestRotation:
    def test_new_key_encrypts_old_keys_decrypt(self, tmp_path):
        """After adding a master key, new writes use it and old ciphertexts still decrypt."""
        path = tmp_path / "ring.json"
        first = generate_key_file(path)
        cfg = {
            **AT_REST,
            "encryption": {"keyring": {"file": str(path)}},
            "store": {"path": str(tmp_path / "runs.sqlite")},
        }
        pm = manager(config=cfg)
        old = enc(pm, b"old data", ref(tenant="a"))
        assert key_id_of(old) == first.id
        second = add_key(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        pm2 = manager(config=cfg)
        new = enc(pm2, b"new data", ref(tenant="a"))
        assert key_id_of(new) == second.id
        assert dec(pm2, old, ref(tenant="a")) == b"old data"
        # The running manager picks the new key up at its next run.
        p = Pipeline("rot")
        p.task("a")(lambda: 1)
        pm.execute_pipeline(p)
        assert key_id_of(enc(pm, b"z", ref(tenant="a"))) == second.id

    def test_rewrap_moves_to_active_key_without_touching_payload(self, tmp_path):
        """rewrap re-wraps the data key only; the result decrypts without the old key."""
        path = tmp_path / "ring.json"
        first = generate_key_file(path)
        cfg = {**AT_REST, "encryption": {"keyring": {"file": str(path)}}}
        pm = manager(config=cfg)
        old = enc(pm, b"payload", ref())
        second = add_key(path)
        pm2 = manager(config=cfg)
        plugin = pm2.get_plugin("encryption")
        new = plugin.rewrap(old, ref())
        assert key_id_of(new) == second.id
        assert new[-35:] == old[-35:]  # same nonce, sealed body and tag
        assert plugin.rewrap(new, ref()) is None  # already current
        # Drop the old key: only the re-wrapped ciphertext still opens.
        ring = json.loads(path.read_text())
        ring["keys"] = [k for k in ring["keys"] if k["id"] != first.id]
        path.write_text(json.dumps(ring))
        pm3 = manager(config=cfg)
        assert dec(pm3, new, ref()) == b"payload"
        with pytest.raises(SecurityError, match="missing from the keyring"):
            dec(pm3, old, ref())


class _XorKms:
    """A toy KMS (AES-GCM under its own key) standing in for a cloud service."""

    def __init__(self):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.key = AESGCM(AESGCM.generate_key(bit_length=256))
        self.calls = 0

    @property
    def active_key_id(self):
        return "kms-key-1"

    def wrap(self, data_key, context):
        self.calls += 1
        nonce = os.urandom(12)
        return "kms-key-1", nonce + self.key.encrypt(nonce, data_key, context)

    def unwrap(self, key_id, wrapped, context):
        return self.key.decrypt(wrapped[:12], wrapped[12:], context)


class TestKms:
    def test_custom_kms_through_config_and_plugin(self):
        """Any object with active_key_id/wrap/unwrap works, from config or the plugin."""
        kms = _XorKms()
        pm = PipelineManager({**AT_REST, "encryption": {"keyring": {"kms": kms}}})
        ct = enc(pm, b"data", ref())
        assert key_id_of(ct) == "kms-key-1"
        assert dec(pm, ct, ref()) == b"data"
        enc(pm, b"more", ref())
        assert kms.calls == 1  # one data key per tenant, wrapped once
        pm2 = manager(kms)
        assert dec(pm2, ct, ref()) == b"data"
        with pytest.raises(SecurityError, match="another tenant"):
            dec(pm2, ct, ref(tenant="other"))

    def test_not_a_kms(self):
        """An object without the protocol is refused at config time."""
        with pytest.raises(ConfigError, match="wrap"):
            PipelineManager({"encryption": {"keyring": {"kms": object()}}})

    def test_per_run_keys(self):
        """per_run_keys gives each run its own data key."""
        kms = _XorKms()
        pm = PipelineManager(
            {**AT_REST, "encryption": {"keyring": {"kms": kms}, "per_run_keys": True}}
        )
        a = enc(pm, b"x", ref(run_id="r1"))
        b = enc(pm, b"x", ref(run_id="r2"))
        enc(pm, b"x", ref(run_id="r1"))
        assert kms.calls == 2
        assert a[:80] != b[:80]


class TestDecorator:
    def test_encrypt_data_marks_task(self):
        """pm.encrypt_data(tenant_id=...) sets tenant_id and encrypt on the task."""
        pm = manager(RING, config={})
        p = Pipeline("dec")

        @p.task("secret")
        @pm.encrypt_data(tenant_id="acme")
        def secret():
            return 1

        @p.task("public")
        def public():
            return 2

        assert dict(p["secret"].options) == {"tenant_id": "acme", "encrypt": True}
        assert pm.execute_pipeline(p).success
        r = ref(task="secret", pipeline="dec")
        assert enc(pm, b"v", r).startswith(ENCRYPTED_MAGIC)
        plain = ref(task="public", pipeline="dec")
        assert enc(pm, b"v", plain) == b"v"

    def test_bad_tenant(self):
        """A non-string tenant_id is refused where the decorator is used."""
        with pytest.raises(ConfigError, match="tenant_id"):
            manager(RING).encrypt_data(tenant_id=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=2048),
    tenant=st.one_of(st.none(), st.text(min_size=1, max_size=12)),
    kind=st.sampled_from(["output", "stream_output", "window_state", "error"]),
)
def test_the_hook_seals_as_the_envelope_does(data: bytes, tenant: str | None, kind: str) -> None:
    """The ``encrypt`` hook seals in one frame: the same layout as
    ``Envelope.seal_noting_key`` (header of the scope's data key, a fresh nonce, AES-GCM
    under the same associated data), so each opens the other's payloads; an output's master
    key id is noted for the run's evidence."""
    plugin = PM.get_plugin("encryption")
    env = plugin.envelope
    r = ref(task="parity", tenant=tenant, kind=kind)
    plugin._seen[r.run_id] = {}
    try:
        by_hook = enc(PM, data, r)
        by_envelope, kid = env.seal_noting_key(data, r)
        noted = dict(plugin._seen[r.run_id])
    finally:
        plugin._seen.pop(r.run_id, None)
    assert env.open(by_hook, r) == data == dec(PM, by_envelope, r)
    assert len(by_hook) == len(by_envelope)
    head = len(by_hook) - len(data) - 16 - 12  # the header: the scope's, shared
    assert by_hook[:head] == by_envelope[:head]
    assert by_hook[head : head + 12] != by_envelope[head : head + 12]  # nonces differ
    assert key_id_of(by_hook) == kid == RING.active_key_id
    assert noted == ({"parity": kid} if kind == "output" else {})
