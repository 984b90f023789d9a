"""TLS between driver, scheduler and workers of a local cluster (certificates made here)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import pytest
from xlib_pipeline_dask import DaskPlugin

from xlib_pipeline import Pipeline
from xlib_pipeline.testing import ExecutorConformance, isolated_manager

pytestmark = pytest.mark.slow


def _make_pki(folder: Path) -> dict[str, str]:
    """A CA and one leaf certificate (client, scheduler and worker share it) as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xlib-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dask-node")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "tls_ca_file": ("ca.pem", ca.public_bytes(pem)),
        "tls_client_cert": ("node.pem", leaf.public_bytes(pem)),
        "tls_client_key": (
            "node.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    }
    out = {}
    for field, (name, data) in files.items():
        path = folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        out[field] = str(path)
    return out


def _pid_pipeline() -> Pipeline:
    p = Pipeline("tls_pids")

    @p.task("a")
    def a():
        return os.getpid()

    @p.task("b", depends_on=["a"])
    def b(x):
        return (x, os.getpid())

    return p


class TestTLS:
    def test_tls_cluster_runs_tasks_and_refuses_plaintext(self, tmp_path, monkeypatch):
        """With CA-signed certificates every hop is tls:// and a client without them is refused."""
        from distributed import Client

        monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))
        pki = _make_pki(tmp_path)
        config = {
            "distributed": {
                "n_workers": 2,
                "worker_class": "worker",
                "security": {**pki, "require_encryption": True},
            }
        }
        with isolated_manager(config, plugins=[DaskPlugin()]) as pm:
            result = pm.execute_pipeline(_pid_pipeline(), distributed=True)
            assert result.success, result.error
            assert os.getpid() not in result.final_result
            handle = pm.get_plugin("dask").handle
            assert handle.address.startswith("tls://127.0.0.1:")
            assert handle.security.require_encryption is True
            client = handle.client()
            workers = client.scheduler_info()["workers"]
            assert len(workers) == 2 and all(w.startswith("tls://") for w in workers)
            with pytest.raises(Exception):  # noqa: B017 - any refusal will do
                Client(handle.address, timeout=3, set_as_default=False)

    def test_encryption_in_transit_uses_temporary_credentials(self, tmp_path, monkeypatch):
        """security.encryption_in_transit without credentials: ephemeral TLS for a local cluster."""
        enc = pytest.importorskip("xlib_pipeline_encryption")
        monkeypatch.setenv("XLIB_PIPELINE_HOME", str(tmp_path / "home"))
        plugin_cls = next(
            getattr(enc, n)
            for n in dir(enc)
            if n.endswith("Plugin") and isinstance(getattr(enc, n), type)
        )
        config = {
            "security": {"encryption_in_transit": True},
            "distributed": {"n_workers": 1, "worker_class": "worker"},
        }
        try:
            pm = isolated_manager(config, plugins=[DaskPlugin(), plugin_cls()])
        except Exception as exc:  # the encryption plugin may need more config
            pytest.skip(f"encryption plugin refused the config: {exc}")
        with pm:
            result = pm.execute_pipeline(_pid_pipeline(), distributed=True)
            assert result.success, result.error
            assert pm.get_plugin("dask").handle.address.startswith("tls://")


class TestDaskConformance(ExecutorConformance):
    """The dask executor passes the core's executor conformance suite."""

    executor = "dask"
    remote = True
    config = {"distributed": {"n_workers": 1, "worker_class": "worker"}}

    def make_manager(self):
        return isolated_manager({"max_workers": 2, **self.config}, plugins=[DaskPlugin()])
