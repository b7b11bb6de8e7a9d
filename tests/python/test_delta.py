"""Delta Lake tables written by Quiver, read by the `deltalake` package and Polars without
Quiver, and tables `deltalake` wrote, appended to through Quiver."""

import datetime as dt
import json

import deltalake
import polars as pl
import pyarrow as pa
import pyarrow.flight as fl
import pytest


def put(client, table, **command):
    writer, reader = client.do_put(fl.FlightDescriptor.for_command(json.dumps(command)), table.schema)
    writer.write_table(table)
    writer.done_writing()
    meta = reader.read()
    writer.close()  # raises the put's error
    return json.loads(meta.to_pybytes())


def get(client, **ticket):
    return client.do_get(fl.Ticket(json.dumps(ticket))).read_all()


def table_dir(server, asset):
    return server.cwd / "data" / "delta" / asset


def rows(n, start=0, day="2024-01-01"):
    return pa.table(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "amount": pa.array([i * 0.5 for i in range(start, start + n)], pa.float64()),
            "code": pa.array([i % 250 for i in range(start, start + n)], pa.uint8()),
            "name": pa.array([f"n{i}" for i in range(start, start + n)], pa.large_string()),
            "day": pa.array([dt.date.fromisoformat(day)] * n, pa.date32()),
            "at": pa.array([dt.datetime(2024, 1, 1, 12, 0, i % 60) for i in range(n)], pa.timestamp("us")),
        }
    )


def test_a_quiver_table_is_a_delta_table(server, client):
    put(client, rows(100), target="delta", asset="sales/orders")
    put(client, rows(50, start=100), target="delta", asset="sales/orders", mode="append")

    table = deltalake.DeltaTable(str(table_dir(server, "sales/orders")))
    assert table.version() == 1
    read = table.to_pyarrow_table().sort_by("id")
    assert read.num_rows == 150
    assert read.column("id").to_pylist() == list(range(150))
    # What other engines see: Delta's types (uint8 is stored as a short, large strings as strings).
    fields = {f.name: f.type for f in read.schema}
    assert pa.types.is_int16(fields["code"])
    assert fields["at"] == pa.timestamp("us")
    assert [h["operation"] for h in table.history()] == ["WRITE", "WRITE"]
    adds = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    # Statistics other engines skip files with.
    assert sorted(a["num_records"] for a in adds) == [50, 100]
    assert sorted((a["min.id"], a["max.id"]) for a in adds) == [(0, 99), (100, 149)]

    frame = pl.read_delta(str(table_dir(server, "sales/orders")))
    assert frame.height == 150 and frame["amount"].sum() == sum(i * 0.5 for i in range(150))

    # Through Quiver the exact Arrow types come back.
    back = get(client, target="delta", asset="sales/orders").sort_by("id")
    assert back.schema == rows(1).schema
    assert back.equals(pa.concat_tables([rows(100), rows(50, start=100)]).combine_chunks())


def test_overwrite_replaces_and_time_travel_reads_older_versions(server, client):
    put(client, rows(10), target="delta", asset="t")
    put(client, rows(3, start=1000), target="delta", asset="t")
    path = str(table_dir(server, "t"))
    assert deltalake.DeltaTable(path).to_pyarrow_table().num_rows == 3
    old = deltalake.DeltaTable(path, version=0).to_pyarrow_table()
    assert old.num_rows == 10


def test_partitions_are_delta_partitions(server, client):
    for day, start in [("2024-01-01", 0), ("2024-01-02", 100)]:
        put(
            client,
            rows(10, start=start, day=day),
            target="delta",
            asset="events",
            partition=day,
            partition_column="day",
        )
    # Replacing one partition leaves the other.
    put(client, rows(4, start=500, day="2024-01-01"), target="delta", asset="events",
        partition="2024-01-01", partition_column="day")
    table = deltalake.DeltaTable(str(table_dir(server, "events")))
    assert table.metadata().partition_columns == ["day"]
    assert (table_dir(server, "events") / "day=2024-01-02").is_dir()
    read = table.to_pyarrow_table()
    assert read.num_rows == 14
    day2 = table.to_pyarrow_table(filters=[("day", "=", dt.date(2024, 1, 2))])
    assert sorted(day2.column("id").to_pylist()) == list(range(100, 110))

    one = get(client, target="delta", asset="events", partition="2024-01-01")
    assert sorted(one.column("id").to_pylist()) == list(range(500, 504))

    with pytest.raises(pa.ArrowInvalid, match="do not have that key"):
        put(client, rows(2, day="2024-01-05"), target="delta", asset="events",
            partition="2024-01-06", partition_column="day")


def test_quiver_appends_to_a_table_deltalake_wrote(server, client, tmp_path):
    path = table_dir(server, "external/sales")
    path.parent.mkdir(parents=True, exist_ok=True)
    first = pa.table({"id": pa.array([1, 2], pa.int64()), "note": ["a", "b"]})
    deltalake.write_deltalake(str(path), first)
    deltalake.write_deltalake(str(path), pa.table({"id": pa.array([3], pa.int64()), "note": ["c"]}), mode="append")

    # Quiver appends rows with one of the table's columns and a new one.
    ours = pa.table({"id": pa.array([4], pa.int64()), "score": pa.array([0.5])})
    put(client, ours, target="delta", asset="external/sales", mode="append")

    table = deltalake.DeltaTable(str(path))
    assert table.version() == 2
    read = table.to_pyarrow_table().sort_by("id")
    assert read.column("id").to_pylist() == [1, 2, 3, 4]
    assert read.column("note").to_pylist() == ["a", "b", "c", None]
    assert read.column("score").to_pylist() == [None, None, None, 0.5]


def test_an_append_by_another_engine_during_a_put_keeps_both(server, client):
    put(client, rows(5), target="delta", asset="shared")
    path = str(table_dir(server, "shared"))
    command = json.dumps({"target": "delta", "asset": "shared", "mode": "append"})
    batch = rows(7, start=100)
    writer, reader = client.do_put(fl.FlightDescriptor.for_command(command), batch.schema)
    writer.write_table(batch)
    # While Quiver's put is open, another engine commits the next version.
    deltalake.write_deltalake(path, rows(3, start=900).cast(
        deltalake.DeltaTable(path).to_pyarrow_table().schema), mode="append")
    writer.done_writing()
    json.loads(reader.read().to_pybytes())
    writer.close()
    table = deltalake.DeltaTable(path)
    ids = sorted(table.to_pyarrow_table().column("id").to_pylist())
    assert ids == list(range(5)) + list(range(100, 107)) + list(range(900, 903))
    assert table.version() == 2


def test_types_delta_cannot_hold_are_refused_by_name(server, client):
    bad = pa.table({"id": [1], "t": pa.array([1], pa.time64("us"))})
    with pytest.raises(pa.ArrowInvalid, match="column 't'"):
        put(client, bad, target="delta", asset="bad")
    assert not (table_dir(server, "bad") / "_delta_log").exists()


def test_checkpoints_keep_reads_short(tmp_path):
    from conftest import Server

    (tmp_path / "quiver.toml").write_text(
        '[targets.delta]\nkind = "delta"\ncheckpoint_interval = 3\n'
    )
    server = Server(tmp_path, args=["--config", str(tmp_path / "quiver.toml")])
    try:
        client = fl.connect(server.uri)
        for i in range(7):
            put(client, rows(2, start=i * 10), target="delta", asset="c", mode="append")
        log = table_dir(server, "c") / "_delta_log"
        checkpoints = sorted(p.name for p in log.glob("*.checkpoint.parquet"))
        assert checkpoints == ["00000000000000000003.checkpoint.parquet", "00000000000000000006.checkpoint.parquet"]
        assert deltalake.DeltaTable(str(table_dir(server, "c"))).to_pyarrow_table().num_rows == 14
        assert get(client, target="delta", asset="c").num_rows == 14
        client.close()
    finally:
        server.stop()

