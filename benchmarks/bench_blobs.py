"""Large outputs through the blob store, against a plain write + fsync of the same bytes.

``python benchmarks/bench_blobs.py [--quick] [--mib 256]``. In one process and run, repeated
and interleaved, it times:

* the reference: ``write`` + ``fsync`` of the output's bytes to a new file on the same disk;
* a one-task pipeline returning the output, store on, encryption at rest on (blob sealed
  chunk by chunk), from ``execute_pipeline`` to its return (the blob is durable then);
* the same with encryption off.

Two outputs: a ``bytes`` (streamed by the pickler from its memory) and a columnar value
whose buffers pickle out of band (as numpy arrays and Arrow buffers do). It reports medians
and ratios, then the peak extra memory of writing the output (tracemalloc, separate run),
as a fraction of the output size. Targets: <= 1.5x the reference, <= 1.2x memory.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from xlib_pipeline import Pipeline, PipelineManager


class Columns:
    """Buffers that pickle out of band (protocol 5), like a numpy array's."""

    def __init__(self, *cols: Any) -> None:
        self.cols = cols

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (Columns, tuple(pickle.PickleBuffer(c) for c in self.cols))


def reference(data: Any, folder: Path) -> float:
    path = folder / "reference.bin"
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        fh.write(memoryview(data).cast("B") if not isinstance(data, bytes) else data)
        os.fsync(fh.fileno())
    dt = time.perf_counter() - t0
    path.unlink()
    return dt


def pipeline_of(value: Any) -> Pipeline:
    p = Pipeline("big_output")
    p.add_task("produce", lambda: value)
    return p


def run(value: Any, folder: Path, *, encrypted: bool, n: int) -> float:
    config: dict[str, Any] = {
        "store": {"path": str(folder / f"runs{n}.sqlite")},
        "parallel_execution": False,
    }
    if encrypted:
        config["security"] = {"encryption_at_rest": True}
        config["encryption"] = {"keyring": {"file": str(folder / "keys" / "ring.json")}}
    with PipelineManager(config) as pm:
        t0 = time.perf_counter()
        result = pm.execute_pipeline(pipeline_of(value))
        dt = time.perf_counter() - t0
        assert result.success, result.error
        store = pm.store
        assert store is not None
        assert len(store.blob_names()) == 1
    return dt


def peak_extra(value: Any, folder: Path, *, encrypted: bool, n: int) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        run(value, folder, encrypted=encrypted, n=n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - base


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mib", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args()
    mib = args.mib or (32 if args.quick else 256)
    repeat = args.repeat or (2 if args.quick else 3)
    size = mib << 20
    from xlib_pipeline_encryption import generate_key_file

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP", ".")) as tmp:
        folder = Path(tmp)
        generate_key_file(folder / "keys" / "ring.json")
        outputs = {
            "bytes": os.urandom(size),
            "columns (out of band)": Columns(
                bytearray(os.urandom(size // 2)), bytearray(size // 2)
            ),
        }
        print(f"output size {mib} MiB, {repeat} repeats, medians (s)")
        n = 0
        for label, value in outputs.items():
            ref, enc, plain = [], [], []
            raw = value if isinstance(value, bytes) else b"".join(bytes(c) for c in value.cols)
            for _ in range(repeat):
                ref.append(reference(raw, folder))
                n += 1
                enc.append(run(value, folder, encrypted=True, n=n))
                n += 1
                plain.append(run(value, folder, encrypted=False, n=n))
            del raw
            r, e, p = (statistics.median(x) for x in (ref, enc, plain))
            print(
                f"{label:24} write+fsync {r:.3f}  encrypted {e:.3f} ({e / r:.2f}x)  "
                f"plaintext {p:.3f} ({p / r:.2f}x)"
            )
        for label, value in outputs.items():
            for encrypted in (True, False):
                n += 1
                extra = peak_extra(value, folder, encrypted=encrypted, n=n)
                what = "encrypted" if encrypted else "plaintext"
                print(
                    f"{label:24} {what:9} peak extra memory {extra / 2**20:.1f} MiB "
                    f"({extra / size:.3f}x the output)"
                )


if __name__ == "__main__":
    main()
