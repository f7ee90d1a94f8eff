"""A content hash of a dataset, for the caches keyed by the data they were computed on (the teacher's outputs, a
fine-tuned teacher). Ground floor: imports nothing of the package."""

from __future__ import annotations


def content_fingerprint(dataset) -> str:
    """A hash of a dataset's rows and features. Used to key caches of work done on a dataset: equal content gives
    an equal key whatever chain of transforms produced it (`Dataset._fingerprint` follows the transform history)."""
    import hashlib

    import pyarrow as pa

    h = hashlib.sha256(str(dataset.features).encode())
    table = dataset.with_format("arrow")[:]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()[:16]
