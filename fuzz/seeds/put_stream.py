"""Writes the seeds of the put_stream fuzz target (fuzz/seeds/put_stream/): DoPut streams as
pyarrow encodes them, whole and damaged. Each message is its IPC header and its body, each
preceded by its length as a little-endian u32. Run with pyarrow installed:

    python fuzz/seeds/put_stream.py
"""
import datetime
import decimal
import io
import os
import struct

import pyarrow as pa

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "put_stream")


def messages(batches, compression=None):
    """The header and body of each message pyarrow writes for `batches`."""
    sink = io.BytesIO()
    schema = batches[0].schema
    opts = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, schema, options=opts) as w:
        for b in batches:
            w.write_batch(b)
    reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(sink.getvalue()))
    out = []
    while True:
        try:
            m = reader.read_next_message()
        except StopIteration:
            break
        body = m.body.to_pybytes() if m.body is not None else b""
        out.append([bytearray(m.metadata.to_pybytes()), bytearray(body)])
    return out


def write(name, msgs):
    data = b""
    for header, body in msgs:
        data += struct.pack("<I", len(header)) + bytes(header) + struct.pack("<I", len(body)) + bytes(body)
    open(os.path.join(OUT, name), "wb").write(data)


def replace_once(buf, old, new):
    """Overwrites the one occurrence of `old` in `buf` with `new`."""
    i = bytes(buf).find(old)
    assert i >= 0 and bytes(buf).find(old, i + 1) < 0, old
    buf[i:i + len(new)] = new


def q(*values):
    """Little-endian i64s, as the header's field nodes and buffers hold them."""
    return struct.pack("<" + "q" * len(values), *values)


ids = pa.record_batch([pa.array(range(1000), pa.int64())], names=["id"])
write("ids", messages([ids]))
m = messages([ids])
m[1][1] = m[1][1][:100]
write("ids_truncated_body", m)
m = messages([ids])
m[1][0] = m[1][0][: len(m[1][0]) // 2]
write("ids_truncated_header", m)

nulls = pa.record_batch([pa.array([None if i % 143 == 0 else i for i in range(1000)], pa.int64())], names=["id"])
m = messages([nulls])
replace_once(m[1][0], q(1000, 7), q(-1000, 7))
write("negative_node_length", m)
m = messages([nulls])
replace_once(m[1][0], q(128, 8000), q(128, -8000))
write("negative_buffer_length", m)
m = messages([nulls])
replace_once(m[1][0], q(128, 8000), q(-128, 8000))
write("negative_buffer_offset", m)
# The buffer vector's length, just before its first buffer: 2, made 1.
m = messages([nulls])
h = m[1][0]
i = bytes(h).find(q(0, 125))
assert h[i - 4:i] == struct.pack("<I", 2)
h[i - 4:i] = struct.pack("<I", 1)
write("one_buffer_too_few", m)

n = 200
kinds = pa.array([["a", "b", "c"][i % 3] for i in range(n)]).dictionary_encode()
more = pa.array([["x", "y"][i % 2] for i in range(n)]).dictionary_encode()
varied = pa.record_batch(
    [
        pa.array([None if i % 7 == 0 else i for i in range(n)], pa.int64()),
        pa.array([None if i % 5 == 0 else f"name {i}" for i in range(n)], pa.string()),
        pa.array([f"large {i}" for i in range(n)], pa.large_string()),
        kinds,
        more,
        pa.array([f"a view longer than twelve bytes {i}" for i in range(n)], pa.string_view()),
        pa.array([None if i % 4 == 0 else list(range(i % 3)) for i in range(n)], pa.list_(pa.int32())),
        pa.array([{"x": i, "y": str(i)} for i in range(n)], pa.struct([("x", pa.int32()), ("y", pa.string())])),
        pa.UnionArray.from_sparse(pa.array([i % 2 for i in range(n)], pa.int8()),
                                  [pa.array(range(n), pa.int32()), pa.array([f"s{i}" for i in range(n)])]),
        pa.UnionArray.from_dense(pa.array([i % 2 for i in range(n)], pa.int8()),
                                 pa.array([i // 2 for i in range(n)], pa.int32()),
                                 [pa.array(range((n + 1) // 2), pa.int32()), pa.array([f"d{i}" for i in range(n // 2)])]),
        pa.RunEndEncodedArray.from_arrays(pa.array(list(range(3, n, 3)) + [n], pa.int32()),
                                          pa.array([f"run {i}" for i in range(len(range(3, n, 3)) + 1)])),
        pa.array([i % 3 == 0 for i in range(n)]),
        pa.array([decimal.Decimal(i) / 100 for i in range(n)], pa.decimal128(15, 2)),
        pa.array([datetime.datetime(2024, 1, 1) + datetime.timedelta(seconds=i) for i in range(n)], pa.timestamp("us", "UTC")),
        pa.array([None] * n, pa.null()),
        pa.array([bytes([i % 256]) * 4 for i in range(n)], pa.binary(4)),
        pa.array([[i, i + 1] for i in range(n)], pa.list_(pa.int16(), 2)),
        pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
    ],
    names=["id", "name", "large", "kind", "more", "view", "list", "struct", "sparse", "dense",
           "runs", "flag", "price", "at", "nothing", "fixed", "pair", "map"],
)
write("varied", messages([varied, varied.slice(3, 17)]))
write("varied_zstd", messages([varied], compression="zstd"))
write("varied_lz4", messages([varied], compression="lz4"))

one = pa.record_batch([kinds], names=["kind"])
two = pa.record_batch([kinds, more], names=["kind", "more"])
m1, m2 = messages([one]), messages([two])
write("dictionary_id_unknown", [m1[0], m2[2], m1[2]])
write("dictionary_missing", [m1[0], m1[2]])
numbers = pa.record_batch([pa.DictionaryArray.from_arrays(pa.array([0, 1] * 50, pa.int32()), pa.array([10, 20], pa.int64()))], names=["kind"])
write("dictionary_wrong_values", [m1[0], messages([numbers])[1], m1[2]])
write("batch_before_schema", messages([ids])[1:])

m = messages([pa.record_batch([pa.array(range(1000), pa.int64())], names=["id"])], compression="zstd")
body = m[1][1]
# The values buffer's 8-byte uncompressed length: 8000, forged to 2^40.
replace_once(body, q(8000), q(1 << 40))
write("compressed_length_forged", m)
