"""A content hash of a dataset, for the caches keyed by the data they were computed on (the teacher's outputs, a
fine-tuned teacher). Ground floor: imports nothing of the package."""

from __future__ import annotations


def content_fingerprint(dataset) -> str:
    """A hash of a dataset's rows and features. Used to key caches of work done on a dataset: equal content gives
    an equal key whatever chain of transforms produced it (`Dataset._fingerprint` follows the transform history)."""
    import hashlib

    import pyarrow as pa

    h = hashlib.sha256(str(dataset.features).encode())
    # the rows alone: a table's schema metadata carries the datasets fingerprint of its transform history (two equal
    # tables made by two `map`s whose functions capture different objects differ there), and its chunks follow how
    # it was built
    table = dataset.with_format("arrow")[:].replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()[:16]
