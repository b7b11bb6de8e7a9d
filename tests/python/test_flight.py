"""Quiver through a real pyarrow Flight client, as a user would call it."""

import datetime as dt
import decimal
import json

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.flight as fl
import pyarrow.parquet as pq
import pytest

FILE_TARGETS = ["parquet", "json", "csv", "arrow"]
NESTED = {"list", "struct"}


def put(client, descriptor, table, chunk=None):
    writer, reader = client.do_put(descriptor, table.schema)
    writer.write_table(table, max_chunksize=chunk)
    writer.done_writing()
    meta = reader.read()
    writer.close()
    return json.loads(meta.to_pybytes())


def cmd(**fields):
    return fl.FlightDescriptor.for_command(json.dumps(fields))


def get(client, **ticket):
    return client.do_get(fl.Ticket(json.dumps(ticket))).read_all()


def typed_table(exclude=()):
    columns = {
        "i8": pa.array([-128, None, 127], pa.int8()),
        "i16": pa.array([-32768, None, 32767], pa.int16()),
        "i32": pa.array([-(2**31), None, 2**31 - 1], pa.int32()),
        "i64": pa.array([-(2**63), None, 2**63 - 1], pa.int64()),
        "u8": pa.array([0, None, 255], pa.uint8()),
        "u16": pa.array([0, None, 65535], pa.uint16()),
        "u32": pa.array([0, None, 2**32 - 1], pa.uint32()),
        "u64": pa.array([0, None, 2**64 - 1], pa.uint64()),
        "f32": pa.array([1.5, None, -0.25], pa.float32()),
        "f64": pa.array([0.1, None, 1e308], pa.float64()),
        "bool": pa.array([True, None, False]),
        "utf8": pa.array(["ünïcødé ✓", None, ""]),
        "large_utf8": pa.array(["a", None, "b,c"], pa.large_string()),
        "binary": pa.array([b"\x00\x01", None, b""], pa.binary()),
        "date32": pa.array([dt.date(1970, 1, 1), None, dt.date(2262, 4, 11)], pa.date32()),
        "ts_s": pa.array([0, None, 1_700_000_000], pa.timestamp("s")),
        "ts_ms": pa.array([0, None, 1_700_000_000_123], pa.timestamp("ms")),
        "ts_us": pa.array([0, None, 1_700_000_000_123_456], pa.timestamp("us")),
        "ts_ns": pa.array([0, None, 1_700_000_000_123_456_789], pa.timestamp("ns")),
        "ts_tz": pa.array([0, None, 1_700_000_000_123_456], pa.timestamp("us", tz="Europe/Paris")),
        "ts_utc": pa.array([0, None, 1_700_000_000_123_456_789], pa.timestamp("ns", tz="UTC")),
        "time64": pa.array([0, None, 86_399_999_999], pa.time64("us")),
        "decimal": pa.array(
            [decimal.Decimal("12345678901234567890.1234567891"), None, decimal.Decimal("-0.0000000001")],
            pa.decimal128(38, 10),
        ),
        "list": pa.array([[1, 2], None, []], pa.list_(pa.int32())),
        "struct": pa.array([{"a": 1, "b": "x"}, None, {"a": None, "b": "z"}], pa.struct([("a", pa.int64()), ("b", pa.string())])),
        "dict": pa.array(["red", None, "red"]).dictionary_encode(),
    }
    return pa.table({k: v for k, v in columns.items() if k not in exclude})


@pytest.mark.parametrize("target", FILE_TARGETS + ["duckdb"])
def test_readme_round_trip(client, target):
    """The README's first example, for every file target."""
    exclude = NESTED | {"binary"} if target == "csv" else set()
    t = typed_table(exclude)
    descriptor = fl.FlightDescriptor.for_path(target, "sales", "daily")
    meta = put(client, descriptor, t, chunk=2)
    assert meta["asset"] == "sales/daily"
    assert meta["target"] == target
    assert meta["rows"] == 3
    assert meta["version"] == 1
    if target == "duckdb":
        assert meta["bytes"] == 0, "DuckDB does not report per-table storage"
        assert meta["location"].endswith("/data/quiver.duckdb#sales.daily")
    else:
        assert meta["bytes"] > 0
        assert meta["location"].endswith(f"/data/{target}/sales/daily.{target}")
    assert isinstance(meta["duration_ms"], int)
    info = client.get_flight_info(descriptor)
    assert info.total_records == 3
    assert info.schema.equals(t.schema, check_metadata=True)
    got = client.do_get(info.endpoints[0].ticket).read_all()
    assert got.schema.equals(t.schema)
    assert got.combine_chunks().equals(t.combine_chunks())


def test_csv_refuses_nested_columns_by_name(client):
    t = typed_table()
    with pytest.raises(pa.ArrowInvalid, match="column 'binary'"):
        put(client, fl.FlightDescriptor.for_path("csv", "nested"), t)
    with pytest.raises(pa.ArrowInvalid, match="column 'list'.*nested"):
        put(client, fl.FlightDescriptor.for_path("csv", "nested"), t.select(["i8", "list"]))


def test_files_follow_dagster_layout_and_open_with_pyarrow(client, server):
    t = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", None, "c"]})
    for target in FILE_TARGETS:
        put(client, fl.FlightDescriptor.for_path(target, "warehouse", "users"), t)
    root = server.cwd / "data"
    assert pq.read_table(root / "parquet/warehouse/users.parquet").equals(t)
    assert feather.read_table(root / "arrow/warehouse/users.arrow").equals(t)
    csv = pcsv.read_csv(
        root / "csv/warehouse/users.csv",
        convert_options=pcsv.ConvertOptions(null_values=["\\N"], strings_can_be_null=True, column_types=t.schema),
    )
    assert csv.equals(t)
    lines = (root / "json/warehouse/users.json").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"id": 1, "name": "a"}, {"id": 2}, {"id": 3, "name": "c"}]


def test_streamed_put_of_many_batches(client):
    n = 1_000_000
    t = pa.table({"id": pa.array(range(n), pa.int64()), "v": pa.array([i * 0.5 for i in range(n)])})
    reader = pa.RecordBatchReader.from_batches(t.schema, t.to_batches(max_chunksize=10_000))
    writer, meta_reader = client.do_put(fl.FlightDescriptor.for_path("parquet", "big"), reader.schema)
    for batch in reader:
        writer.write_batch(batch)
    writer.done_writing()
    meta = json.loads(meta_reader.read().to_pybytes())
    writer.close()
    assert meta["rows"] == n
    got = get(client, target="parquet", asset="big")
    assert got.num_rows == n
    assert got.column("id").to_pylist()[-3:] == [n - 3, n - 2, n - 1]
    assert got.equals(t)


@pytest.mark.parametrize("target", ["parquet", "arrow", "duckdb"])
def test_large_reads_arrive_in_messages_of_about_two_mebibytes(client, target):
    """A read is streamed in ~2 MiB messages (what gRPC clients accept by default), whatever
    the stored batch size, and a dictionary column changing between batches reads back."""
    n = 400_000
    colours = pa.array(["red", "green", "blue", "cyan", "teal"])
    batches = [
        pa.record_batch(
            {
                "id": pa.array(range(start, start + 100_000), pa.int64()),
                "text": pa.array([f"row {i} with some words in it" for i in range(start, start + 100_000)]),
                "colour": pa.DictionaryArray.from_arrays(
                    pa.array([i % 2 for i in range(100_000)], pa.int32()), colours[start // 100_000 :][:2]
                ),
            }
        )
        for start in range(0, n, 100_000)
    ]
    t = pa.Table.from_batches(batches)
    if target == "arrow":
        # An Arrow IPC file keeps one dictionary per column across its batches.
        t = t.unify_dictionaries()
    put(client, fl.FlightDescriptor.for_path(target, "wide"), t)
    reader = client.do_get(fl.Ticket(json.dumps({"target": target, "asset": "wide"})))
    chunks = []
    while True:
        try:
            chunks.append(reader.read_chunk().data)
        except StopIteration:
            break
    got = pa.Table.from_batches(chunks)
    assert got.num_rows == n
    assert len(chunks) >= 8, f"{t.nbytes} bytes came in {len(chunks)} messages"
    assert max(c.nbytes for c in chunks) < 3 * 1024 * 1024
    assert got.column("id").to_pylist() == list(range(n))
    assert got.column("text").equals(t.column("text"))
    assert got.column("colour").to_pylist() == t.column("colour").to_pylist()


def test_partitions_and_projection(client):
    for day, rows in [("2024-01-01", 2), ("2024-01-02", 3)]:
        t = pa.table({"day": [day] * rows, "n": list(range(rows))})
        meta = put(client, cmd(target="parquet", asset="events", partition=day), t)
        assert meta["partition"] == day
    assert get(client, target="parquet", asset="events").num_rows == 5
    one = get(client, target="parquet", asset="events", partition="2024-01-02", columns=["n"])
    assert one.column_names == ["n"]
    assert one.column("n").to_pylist() == [0, 1, 2]
    both = get(client, asset="events", partition=["2024-01-01", "2024-01-02"])
    assert both.num_rows == 5
    info = client.get_flight_info(cmd(target="parquet", asset="events", partition="2024-01-01"))
    assert info.total_records == 2
    meta = json.loads(info.app_metadata)
    assert [p["partition"] for p in meta["partitions"]] == ["2024-01-01", "2024-01-02"]


def test_catalog_and_actions(client):
    t = pa.table({"x": [1, 2]})
    put(client, fl.FlightDescriptor.for_path("json", "a", "one"), t)
    put(client, fl.FlightDescriptor.for_path("arrow", "b", "two"), t)
    flights = list(client.list_flights())
    assert sorted(f.descriptor.path for f in flights) == [[b"arrow", b"b", b"two"], [b"json", b"a", b"one"]]
    only = list(client.list_flights(json.dumps({"target": "json"}).encode()))
    assert [f.total_records for f in only] == [2]
    assert client.get_schema(fl.FlightDescriptor.for_path("json", "a", "one")).schema.equals(t.schema)

    actions = {a.type for a in client.list_actions()}
    assert actions == {"delete", "describe", "list-targets", "health"}
    targets = json.loads(next(client.do_action(fl.Action("list-targets", b""))).body.to_pybytes())
    assert {t["name"] for t in targets} == set(FILE_TARGETS) | {"duckdb", "delta"}
    assert next(t for t in targets if t["name"] == "duckdb")["modes"] == ["overwrite", "append", "upsert"]
    health = json.loads(next(client.do_action(fl.Action("health", b""))).body.to_pybytes())
    assert health["status"] == "ok"
    described = json.loads(
        next(client.do_action(fl.Action("describe", json.dumps({"target": "json", "asset": "a/one"}).encode()))).body.to_pybytes()
    )
    assert described["rows"] == 2 and described["history"][0]["version"] == 1
    list(client.do_action(fl.Action("delete", json.dumps({"target": "json", "asset": "a/one"}).encode())))
    assert [f.descriptor.path for f in client.list_flights()] == [[b"arrow", b"b", b"two"]]


def test_errors_carry_the_right_status(client):
    t = pa.table({"x": [1]})
    with pytest.raises(pa.ArrowInvalid, match="asset key"):
        put(client, fl.FlightDescriptor.for_path("parquet", "..", "etc"), t)
    with pytest.raises(pa.ArrowKeyError, match="unknown target 'nope'"):
        put(client, fl.FlightDescriptor.for_path("nope", "x"), t)
    # pyarrow reports FAILED_PRECONDITION as ArrowInvalid with the gRPC code in the message.
    with pytest.raises(pa.ArrowInvalid, match="precondition failed.*does not support mode 'append'"):
        put(client, cmd(target="parquet", asset="x", mode="append"), t)
    with pytest.raises(pa.ArrowKeyError, match="not found"):
        get(client, target="parquet", asset="missing")
    with pytest.raises(pa.ArrowInvalid, match="not valid"):
        client.do_get(fl.Ticket(b"{oops")).read_all()


def test_idempotent_retry_returns_the_first_result(client):
    first = put(client, cmd(target="arrow", asset="job", idempotency_key="run-7"), pa.table({"x": [1, 2]}))
    again = put(client, cmd(target="arrow", asset="job", idempotency_key="run-7"), pa.table({"x": [9]}))
    assert again["replayed"] is True
    assert again["version"] == first["version"]
    assert get(client, target="arrow", asset="job").column("x").to_pylist() == [1, 2]


def test_sigterm_stops_cleanly(tmp_path):
    from conftest import Server

    srv = Server(tmp_path)
    c = fl.connect(srv.uri)
    put(c, fl.FlightDescriptor.for_path("parquet", "kept"), pa.table({"x": [1]}))
    c.close()
    assert srv.stop() == 0
    assert "shutting down" in srv.logs()
    # A restart sees the committed asset.
    again = Server(tmp_path)
    c = fl.connect(again.uri)
    assert get(c, target="parquet", asset="kept").column("x").to_pylist() == [1]
    c.close()
    again.stop()


def test_config_file_and_strict_validation(tmp_path):
    from conftest import Server

    (tmp_path / "quiver.toml").write_text('[targets.lake]\nkind = "parquet"\ncompression = "snappy"\n')
    srv = Server(tmp_path, args=["--config", "quiver.toml"])
    c = fl.connect(srv.uri)
    meta = put(c, fl.FlightDescriptor.for_path("lake", "t"), pa.table({"x": [1]}))
    assert meta["location"].endswith("/data/lake/t.parquet")
    c.close()
    srv.stop()
    (tmp_path / "bad.toml").write_text('[targets.lake]\nkind = "parquet"\ncompresion = "snappy"\n')
    with pytest.raises(RuntimeError, match="unknown field `compresion`"):
        Server(tmp_path, args=["--config", "bad.toml"])


def test_duckdb_upsert_and_partitions_like_dagster(client):
    orders = pa.table({"order_id": [1, 2], "status": ["new", "new"]})
    put(client, cmd(target="duckdb", asset="analytics/orders", mode="upsert", key=["order_id"]), orders)
    update = pa.table({"order_id": [2, 3], "status": ["paid", "new"]})
    meta = put(client, cmd(target="duckdb", asset="analytics/orders", mode="upsert", key=["order_id"]), update)
    assert meta["mode"] == "upsert"
    got = get(client, target="duckdb", asset="analytics/orders").sort_by("order_id")
    assert got.to_pydict() == {"order_id": [1, 2, 3], "status": ["new", "paid", "new"]}

    for day in ["2024-01-01", "2024-01-02"]:
        t = pa.table({"day": pa.array([dt.date.fromisoformat(day)] * 2, pa.date32()), "v": [1, 2]})
        put(client, cmd(target="duckdb", asset="sales", partition=day, partition_column="day"), t)
    again = pa.table({"day": pa.array([dt.date(2024, 1, 1)], pa.date32()), "v": [9]})
    put(client, cmd(target="duckdb", asset="sales", partition="2024-01-01", partition_column="day"), again)
    got = get(client, target="duckdb", asset="sales")
    assert sorted(got.column("v").to_pylist()) == [1, 2, 9]
    one = get(client, target="duckdb", asset="sales", partition="2024-01-02")
    assert one.column("day").type == pa.date32() and one.num_rows == 2


KILLED_CLIENT = """
import os, sys, time, json
import pyarrow as pa, pyarrow.flight as fl
c = fl.connect(sys.argv[1])
schema = pa.schema([("x", pa.int64())])
w, r = c.do_put(fl.FlightDescriptor.for_command(json.dumps({"target": sys.argv[2], "asset": "victim"})), schema)
for i in range(3):
    w.write_batch(pa.record_batch([pa.array([2] * 1000, pa.int64())], schema=schema))
    time.sleep(0.1)
os._exit(9)  # the process dies mid-put: no done_writing, no close
"""


@pytest.mark.parametrize("target", FILE_TARGETS + ["duckdb"])
def test_client_process_killed_mid_put_changes_nothing(client, server, target):
    import subprocess
    import sys
    import time

    put(client, cmd(target=target, asset="victim"), pa.table({"x": pa.array([1, 1], pa.int64())}))
    before = sorted(p.relative_to(server.cwd) for p in (server.cwd / "data").rglob("*") if p.is_file() and ".duckdb" not in p.name)
    proc = subprocess.run([sys.executable, "-c", KILLED_CLIENT, server.uri, target])
    assert proc.returncode == 9
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = sorted(p.relative_to(server.cwd) for p in (server.cwd / "data").rglob("*") if p.is_file() and ".duckdb" not in p.name)
        if after == before:
            break
        time.sleep(0.1)
    assert after == before, "an aborted put left files behind"
    assert get(client, target=target, asset="victim").column("x").to_pylist() == [1, 1]
    info = client.get_flight_info(fl.FlightDescriptor.for_path(target, "victim"))
    assert json.loads(info.app_metadata)["version"] == 1
