"""Tamper evidence: every edit, deletion, reordering, insertion or truncation is detected."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xlib_pipeline_audit import AuditPlugin, head_path, verify

from xlib_pipeline import Pipeline, PipelineManager

HS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _record_trail(folder: Path, key_env: str | None = None) -> Path:
    """Run a small real pipeline (with a failure and a skip) into a fresh trail."""
    path = folder / "audit.jsonl"
    section: dict = {"path": str(path), "fsync": "never"}
    if key_env:
        section["hmac_key_env"] = key_env
    pm = PipelineManager({"audit": section}, entry_points=False, plugins=[AuditPlugin()])
    p = Pipeline("tamper")

    @p.task("a")
    def a():
        return 1

    @p.task("b", depends_on=["a"])
    def b(x):
        return x + 1

    @p.task("c", depends_on=["a"])
    def c(x):
        raise ValueError("no")

    @p.task("d", depends_on=["c"])
    def d(x):
        return x

    pm.execute_pipeline(p)
    pm.close()
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[bytes, bytes]:
    folder = tmp_path_factory.mktemp("recorded")
    path = _record_trail(folder)
    return path.read_bytes(), head_path(path).read_bytes()


def _write(folder: Path, trail: bytes, head: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "audit.jsonl"
    path.write_bytes(trail)
    head_path(path).write_bytes(head)
    return path


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


class TestIntact:
    def test_recorded_trail_verifies(self, recorded, tmp_path):
        """An untouched trail and head verify, anchored at the last record."""
        trail, head = recorded
        report = verify(_write(tmp_path, trail, head))
        assert report.ok, str(report)
        assert report.records == len(_lines(trail)) == report.head_seq
        assert report.records == 9  # run x2, a b c x2, d upstream_failed x1

    def test_copied_elsewhere(self, recorded, tmp_path):
        """The two files verify anywhere they are copied together (renamed too)."""
        trail, head = recorded
        src = _write(tmp_path / "a", trail, head)
        dst = tmp_path / "b" / "evidence.jsonl"
        dst.parent.mkdir()
        shutil.copy(src, dst)
        shutil.copy(head_path(src), head_path(dst))
        assert verify(dst).ok


class TestDetected:
    @HS
    @given(data=st.data())
    def test_single_byte_change(self, recorded, tmp_path, data):
        """Changing any one byte is detected at the line holding that byte."""
        trail, head = recorded
        pos = data.draw(st.integers(0, len(trail) - 1), label="pos")
        new = data.draw(st.integers(0, 255).filter(lambda b: b != trail[pos]), label="byte")
        bad = trail[:pos] + bytes([new]) + trail[pos + 1 :]
        report = verify(_write(tmp_path / f"b{pos}-{new}", bad, head))
        assert not report.ok
        assert report.line == trail[:pos].count(b"\n") + 1, str(report)

    @HS
    @given(data=st.data())
    def test_record_deleted(self, recorded, tmp_path, data):
        """Deleting any record is detected at its line."""
        trail, head = recorded
        lines = _lines(trail)
        i = data.draw(st.integers(0, len(lines) - 1))
        bad = _join(lines[:i] + lines[i + 1 :])
        report = verify(_write(tmp_path / f"d{i}", bad, head))
        assert not report.ok
        assert report.line == i + 1, str(report)

    @HS
    @given(data=st.data())
    def test_records_swapped(self, recorded, tmp_path, data):
        """Swapping any two records is detected at the first of them."""
        trail, head = recorded
        lines = _lines(trail)
        i = data.draw(st.integers(0, len(lines) - 2))
        j = data.draw(st.integers(i + 1, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        report = verify(_write(tmp_path / f"s{i}-{j}", _join(lines), head))
        assert not report.ok
        assert report.line == i + 1, str(report)
        assert "seq" in (report.reason or "")

    @HS
    @given(data=st.data())
    def test_record_inserted(self, recorded, tmp_path, data):
        """Inserting a line (a copy of a record, or any JSON) is detected at its position."""
        trail, head = recorded
        lines = _lines(trail)
        i = data.draw(st.integers(0, len(lines)))
        extra = data.draw(
            st.one_of(
                st.sampled_from(lines),
                st.dictionaries(st.text(max_size=5), st.integers(), max_size=3).map(
                    lambda d: repr(d).encode()
                ),
            )
        )
        bad = _join([*lines[:i], extra, *lines[i:]])
        report = verify(_write(tmp_path / f"i{i}", bad, head))
        assert not report.ok
        # A copy of the record that follows is indistinguishable from it: the next line
        # is the first one out of place.
        first = i + 2 if i < len(lines) and extra == lines[i] else i + 1
        assert report.line == first, str(report)

    @HS
    @given(data=st.data())
    def test_truncated(self, recorded, tmp_path, data):
        """Cutting the trail at any byte is detected (torn line or short of the head)."""
        trail, head = recorded
        n = data.draw(st.integers(0, len(trail) - 1))
        report = verify(_write(tmp_path / f"t{n}", trail[:n], head))
        assert not report.ok
        assert report.line == trail[:n].count(b"\n") + 1, str(report)

    @HS
    @given(data=st.data())
    def test_head_byte_change(self, recorded, tmp_path, data):
        """Changing any byte of the head anchor is detected."""
        trail, head = recorded
        pos = data.draw(st.integers(0, len(head) - 2))  # the final newline is not content
        new = data.draw(st.integers(0, 255).filter(lambda b: b != head[pos]))
        bad = head[:pos] + bytes([new]) + head[pos + 1 :]
        assert not verify(_write(tmp_path / f"h{pos}-{new}", trail, bad)).ok

    def test_head_missing(self, recorded, tmp_path):
        """A trail without its head anchor does not verify (truncation could not be seen)."""
        trail, head = recorded
        path = _write(tmp_path, trail, head)
        head_path(path).unlink()
        report = verify(path)
        assert not report.ok and "missing" in (report.reason or "")
        assert verify(path, require_head=False).ok

    def test_rechained_last_records_detected_by_head(self, recorded, tmp_path):
        """Dropping the last record fails even though the remaining chain is consistent."""
        trail, head = recorded
        lines = _lines(trail)
        report = verify(_write(tmp_path, _join(lines[:-1]), head))
        assert not report.ok
        assert "truncated" in (report.reason or "")
        assert report.line == len(lines)


class TestCli:
    def test_exit_codes_and_first_bad_line(self, recorded, tmp_path):
        """`xlib-pipeline audit verify` exits 0 when intact, 1 naming the bad line otherwise."""
        trail, head = recorded
        good = _write(tmp_path / "good", trail, head)
        lines = _lines(trail)
        lines[2], lines[3] = lines[3], lines[2]
        bad = _write(tmp_path / "bad", _join(lines), head)
        cmd = [sys.executable, "-m", "xlib_pipeline.cli", "audit", "verify"]
        ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert "OK" in ok.stdout
        ko = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, timeout=120)
        assert ko.returncode == 1
        assert "line 3" in ko.stderr and "seq" in ko.stderr
        missing = subprocess.run(
            [*cmd, str(tmp_path / "nope.jsonl")], capture_output=True, text=True, timeout=120
        )
        assert missing.returncode == 2


class TestHmac:
    def test_keyed_trail(self, tmp_path, monkeypatch):
        """An HMAC trail verifies only with its key; a wrong or missing key fails."""
        monkeypatch.setenv("AUDIT_TEST_KEY", "s3cret-key")
        path = _record_trail(tmp_path, key_env="AUDIT_TEST_KEY")
        assert verify(path, key="s3cret-key").ok
        assert verify(path, key=b"s3cret-key").ok
        wrong = verify(path, key="other")
        assert not wrong.ok
        assert not verify(path).ok
        assert "HMAC" in (verify(path).reason or "")

    def test_key_given_for_plain_trail(self, recorded, tmp_path):
        """A key for a plain SHA-256 trail is refused (a possible downgrade)."""
        trail, head = recorded
        report = verify(_write(tmp_path, trail, head), key="k")
        assert not report.ok

    def test_cli_key_env(self, tmp_path, monkeypatch):
        """`audit verify --key-env` reads the key from the environment."""
        monkeypatch.setenv("AUDIT_TEST_KEY", "s3cret-key")
        path = _record_trail(tmp_path, key_env="AUDIT_TEST_KEY")
        from xlib_pipeline.cli import main

        assert main(["audit", "verify", str(path), "--key-env", "AUDIT_TEST_KEY"]) == 0
        assert main(["audit", "verify", str(path), "--key", "wrong"]) == 1
        assert main(["audit", "verify", str(path)]) == 1
