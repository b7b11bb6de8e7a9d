"""The quiver Python client (clients/python) against the real server."""

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import quiver_flight


@pytest.fixture
def qc(server):
    with quiver_flight.Client(server.uri) as c:
        yield c


def test_put_and_get_tables_readers_and_frames(qc):
    t = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", None, "c"]})
    result = qc.put(t, "sales/daily", target="parquet")
    assert isinstance(result, quiver_flight.PutResult)
    assert (result.asset, result.target, result.rows, result.version) == ("sales/daily", "parquet", 3, 1)
    assert qc.get("sales/daily", target="parquet").equals(t)

    # A RecordBatchReader is streamed batch by batch, never materialized by the client.
    def generate():
        for i in range(5):
            yield pa.record_batch({"id": pa.array([i], pa.int64()), "name": [f"n{i}"]})

    reader = pa.RecordBatchReader.from_batches(t.schema, generate())
    assert qc.put(reader, ["sales", "stream"], target="arrow").rows == 5
    streamed = qc.get_reader("sales/stream", target="arrow")
    assert sum(b.num_rows for b in streamed) == 5

    frame = pd.DataFrame({"x": [1.5, 2.5], "label": ["p", "q"]})
    qc.put(frame, "frames/pandas", target="json")
    assert qc.get("frames/pandas").to_pandas().equals(frame)

    polars_frame = pl.DataFrame({"k": [1, 2], "v": ["a", "b"]})
    qc.put(polars_frame, "frames/polars", target="duckdb")
    back = pl.from_arrow(qc.get("frames/polars", target="duckdb"))
    assert back.sort("k").equals(polars_frame)


def test_modes_partitions_and_columns(qc):
    base = pa.table({"order_id": [1, 2], "status": ["new", "new"]})
    qc.put(base, "analytics/orders", target="duckdb", mode="overwrite")
    qc.put(pa.table({"order_id": [2], "status": ["paid"]}), "analytics/orders", target="duckdb", mode="upsert", key=["order_id"])
    got = qc.get("analytics/orders", target="duckdb", columns=["status"])
    assert got.column_names == ["status"]
    assert sorted(got.column("status").to_pylist()) == ["new", "paid"]

    for day in ["2024-01-01", "2024-01-02"]:
        qc.put(pa.table({"day": [day], "v": [1]}), "events", target="parquet", partition=day)
    assert qc.get("events", target="parquet", partition=["2024-01-02"]).num_rows == 1
    assert qc.get("events", target="parquet").num_rows == 2


def test_catalog_calls(qc):
    qc.put(pa.table({"x": [1]}), "a/one", target="csv")
    qc.put(pa.table({"x": [1, 2]}), "b/two", target="parquet", idempotency_key="k1")
    replay = qc.put(pa.table({"x": [9]}), "b/two", target="parquet", idempotency_key="k1")
    assert replay.replayed and replay.rows == 2

    listed = qc.list()
    assert [(a.target, a.asset) for a in listed] == [("csv", "a/one"), ("parquet", "b/two")]
    assert listed[1].rows == 2 and listed[1].schema.equals(pa.schema([("x", pa.int64())]))
    assert [a.asset for a in qc.list(prefix="b/")] == ["b/two"]
    assert [a.asset for a in qc.list(target="csv")] == ["a/one"]

    described = qc.describe("b/two", target="parquet")
    assert isinstance(described, quiver_flight.Description)
    assert described.version == 1 and [c.version for c in described.history] == [1]
    assert described.history[0].idempotency_key == "k1"
    assert [(c.name, c.nullable) for c in described.columns] == [("x", True)]
    names = {t.name: t for t in qc.targets()}
    assert names["duckdb"].modes == ["overwrite", "append", "upsert"]
    health = qc.health()
    assert health.status == "ok" and health.targets["parquet"].ok

    assert qc.delete("a/one", target="csv") == quiver_flight.Deleted(asset="a/one", target="csv")
    assert [a.asset for a in qc.list()] == ["b/two"]


def test_typed_errors_carry_the_server_message(qc):
    with pytest.raises(quiver_flight.NotFound, match="asset 'missing' not found in target 'parquet'") as err:
        qc.get("missing", target="parquet")
    assert err.value.code == "NOT_FOUND" and not err.value.retryable
    # The message is the server's, without the transport's wrapping.
    assert str(err.value).startswith("asset 'missing'")
    with pytest.raises(quiver_flight.InvalidArgument, match="asset key"):
        qc.put(pa.table({"x": [1]}), "../escape", target="parquet")
    with pytest.raises(quiver_flight.FailedPrecondition, match="does not support mode 'append'.*duckdb"):
        qc.put(pa.table({"x": [1]}), "x", target="parquet", mode="append")
    with pytest.raises(quiver_flight.NotFound, match="unknown target 'nope'"):
        qc.put(pa.table({"x": [1]}), "x", target="nope")
    with pytest.raises(TypeError, match="cannot store"):
        qc.put({"x": [1]}, "x", target="parquet")


def test_unreachable_server_is_unavailable():
    with quiver_flight.Client("grpc://127.0.0.1:1", timeout=2) as c:
        with pytest.raises(quiver_flight.Unavailable) as err:
            c.list()
    assert err.value.code == "UNAVAILABLE" and err.value.retryable
