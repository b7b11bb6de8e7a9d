"""The hyper target through a real Quiver server driving Tableau's own hyperd, its files
opened with Tableau's Hyper API (tableauhyperapi, which runs a hyperd of its own)."""

import datetime as dt
import decimal
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pytest

tableauhyperapi = pytest.importorskip("tableauhyperapi")
from tableauhyperapi import Connection, HyperProcess, Nullability, SqlType, TableName, Telemetry  # noqa: E402

from conftest import Server  # noqa: E402

# pyarrow raises INVALID_ARGUMENT as ArrowInvalid, the other codes as FlightError.
ERRORS = (fl.FlightError, pa.ArrowException)
HYPERD = Path(tableauhyperapi.__file__).parent / "bin" / "hyper" / "hyperd"


@pytest.fixture
def quiver(tmp_path):
    root = tmp_path / "extracts"
    config = tmp_path / "quiver.toml"
    config.write_text(
        f'[targets.tableau]\nkind = "hyper"\nroot = "{root}"\nhyperd = "{HYPERD}"\n'
    )
    srv = Server(tmp_path, args=["--config", str(config)])
    client = fl.connect(srv.uri)
    yield client, root, srv
    client.close()
    srv.stop()


@pytest.fixture(scope="module")
def hyper(tmp_path_factory):
    # The Hyper API's own hyperd, to open extracts the way Tableau's tools do; its log would
    # otherwise land in the working directory.
    logs = tmp_path_factory.mktemp("hyperapi-log")
    with HyperProcess(Telemetry.DO_NOT_SEND_USAGE_DATA_TO_TABLEAU, parameters={"log_dir": str(logs)}) as process:
        yield process


def put(client, table, asset, mode="overwrite", chunk=None, partition=None):
    command = {"target": "tableau", "asset": asset, "mode": mode}
    if partition is not None:
        command["partition"] = partition
    descriptor = fl.FlightDescriptor.for_command(json.dumps(command))
    writer, reader = client.do_put(descriptor, table.schema)
    writer.write_table(table, max_chunksize=chunk)
    writer.done_writing()
    meta = reader.read()
    writer.close()  # raises the put's error, if it failed
    return json.loads(meta.to_pybytes())


def get(client, asset):
    return client.do_get(fl.Ticket(json.dumps({"target": "tableau", "asset": asset}))).read_all()


def extract(hyper, path):
    """The schema and rows of a .hyper file, as Tableau's Hyper API reads them."""
    with Connection(hyper.endpoint, str(path)) as conn:
        table = conn.catalog.get_table_definition(TableName("Extract", "Extract"))
        columns = [(str(c.name.unescaped), c.type, c.nullability) for c in table.columns]
        rows = conn.execute_list_query('SELECT * FROM "Extract"."Extract" ORDER BY 1')
    return columns, rows


SALES = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "customer": pa.array(["Ada", None, "Grace Hopper"]),
        "paid": pa.array([True, False, None]),
        "amount": pa.array(
            [decimal.Decimal("12.50"), decimal.Decimal("-0.01"), None], pa.decimal128(10, 2)
        ),
        "big": pa.array(
            [decimal.Decimal("12345678901234567890123456.123456789012"), None, decimal.Decimal("0")],
            pa.decimal128(38, 12),
        ),
        "day": pa.array([dt.date(2024, 1, 2), None, dt.date(1999, 12, 31)], pa.date32()),
        "at": pa.array(
            [dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 1, 2, 3, 4, 5, 678000), None],
            pa.timestamp("ms"),
        ),
        "at_utc": pa.array(
            [dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc), None, None],
            pa.timestamp("us", "UTC"),
        ),
        "clock": pa.array([dt.time(1, 2, 3, 4), None, dt.time(23, 59, 59)], pa.time64("us")),
        "ratio": pa.array([0.5, None, 1e-3], pa.float64()),
        "score": pa.array([1.5, None, -2.25], pa.float32()),
        "raw": pa.array([b"\x00\x01", None, b""], pa.binary()),
    }
).replace_schema_metadata(None)


def test_a_put_is_an_extract_tableau_opens(quiver, hyper):
    client, root, _ = quiver
    result = put(client, SALES, "sales/q1")
    assert result["rows"] == 3
    path = root / "sales" / "q1.hyper"
    assert result["location"] == f"file://{path}"
    assert path.is_file()
    # Nothing is left beside the committed file.
    assert sorted(p.name for p in path.parent.iterdir()) == ["q1.hyper"]

    columns, rows = extract(hyper, path)
    assert [(name, str(t)) for name, t, _ in columns] == [
        ("id", "BIG_INT"),
        ("customer", "TEXT"),
        ("paid", "BOOL"),
        ("amount", "NUMERIC(10, 2)"),
        ("big", "NUMERIC(38, 12)"),
        ("day", "DATE"),
        ("at", "TIMESTAMP"),
        ("at_utc", "TIMESTAMP_TZ"),
        ("clock", "TIME"),
        ("ratio", "DOUBLE"),
        ("score", "FLOAT"),
        ("raw", "BYTES"),
    ]
    assert rows[0][0] == 1 and rows[0][1] == "Ada" and rows[0][2] is True
    assert rows[1][1] is None
    assert rows[0][3] == decimal.Decimal("12.50") and rows[1][3] == decimal.Decimal("-0.01")
    assert rows[0][4] == decimal.Decimal("12345678901234567890123456.123456789012")
    assert str(rows[0][5]) == "2024-01-02" and str(rows[2][5]) == "1999-12-31"
    assert str(rows[1][6]) == "2024-01-02 03:04:05.678000"
    assert str(rows[0][8]) == "01:02:03.000004"
    assert rows[2][10] == -2.25
    assert rows[0][11] == b"\x00\x01"


def test_not_null_columns_stay_not_null(quiver, hyper):
    client, root, _ = quiver
    table = pa.table(
        {"k": pa.array([1, 2], pa.int32()), "v": pa.array(["a", None])},
        schema=pa.schema([pa.field("k", pa.int32(), nullable=False), pa.field("v", pa.string())]),
    )
    put(client, table, "keys")
    columns, rows = extract(hyper, root / "keys.hyper")
    assert [n for _, _, n in columns] == [Nullability.NOT_NULLABLE, Nullability.NULLABLE]
    assert rows == [[1, "a"], [2, None]]


EXACT = pa.table(
    {
        "i8": pa.array([-128, 127, None], pa.int8()),
        "u8": pa.array([0, 255, None], pa.uint8()),
        "u16": pa.array([0, 65535, None], pa.uint16()),
        "u32": pa.array([0, 2**32 - 1, None], pa.uint32()),
        "u64": pa.array([0, 2**64 - 1, None], pa.uint64()),
        "f16": pa.array([1.5, -0.25, None], pa.float16()),
        "large": pa.array(["x", "ü" * 3, None], pa.large_string()),
        "view": pa.array(["v", "", None], pa.string_view()),
        "dict": pa.array(["a", "b", "a"]).dictionary_encode(),
        "fixed": pa.array([b"ab", b"cd", None], pa.binary(2)),
        "large_bin": pa.array([b"ab", b"", None], pa.large_binary()),
        "d64": pa.array([dt.date(2020, 2, 29), None, dt.date(1, 1, 1)], pa.date64()),
        "t32": pa.array([dt.time(0, 0, 1), dt.time(12, 0, 0, 5000), None], pa.time32("ms")),
        "ts_s": pa.array([0, -86400, None], pa.timestamp("s")),
        "ts_tz": pa.array([1, 2, None], pa.timestamp("ms", "Europe/Paris")),
        "dec256": pa.array([decimal.Decimal("1.5"), None, decimal.Decimal("-9.9")], pa.decimal256(20, 1)),
    }
)


def test_a_round_trip_returns_the_exact_types_and_values(quiver):
    client, _, _ = quiver
    put(client, EXACT, "exact")
    back = get(client, "exact")
    assert back.schema == EXACT.schema
    assert back.to_pylist() == EXACT.to_pylist()


def test_an_append_adds_rows_and_an_overwrite_replaces_them(quiver, hyper):
    client, root, _ = quiver
    first = pa.table({"n": pa.array([1, 2], pa.int64()), "s": ["a", "b"]})
    second = pa.table({"n": pa.array([3], pa.int64()), "s": ["c"]})
    put(client, first, "events")
    put(client, second, "events", mode="append")
    _, rows = extract(hyper, root / "events.hyper")
    assert rows == [[1, "a"], [2, "b"], [3, "c"]]
    assert get(client, "events").sort_by("n").to_pylist() == pa.concat_tables([first, second]).to_pylist()

    put(client, second, "events")
    _, rows = extract(hyper, root / "events.hyper")
    assert rows == [[3, "c"]]
    assert get(client, "events").to_pylist() == second.to_pylist()


def test_an_append_with_other_columns_is_refused(quiver):
    client, _, _ = quiver
    put(client, pa.table({"n": pa.array([1], pa.int64())}), "events")
    with pytest.raises(ERRORS) as err:
        put(client, pa.table({"m": pa.array([1], pa.int64())}), "events", mode="append")
    assert "must send the stored columns" in str(err.value)
    assert get(client, "events").to_pylist() == [{"n": 1}]


def test_partitions_are_files_of_their_own(quiver, hyper):
    client, root, _ = quiver
    put(client, pa.table({"n": pa.array([1], pa.int64())}), "daily", partition="2024-01-01")
    put(client, pa.table({"n": pa.array([2, 3], pa.int64())}), "daily", partition="2024-01-02")
    assert sorted(p.name for p in (root / "daily").iterdir()) == ["2024-01-01.hyper", "2024-01-02.hyper"]
    _, rows = extract(hyper, root / "daily" / "2024-01-02.hyper")
    assert rows == [[2], [3]]
    assert sorted(get(client, "daily").column("n").to_pylist()) == [1, 2, 3]


def test_a_type_hyper_cannot_hold_is_refused_naming_the_column(quiver):
    client, root, _ = quiver
    table = pa.table({"ok": [1], "tags": pa.array([["a", "b"]], pa.list_(pa.string()))})
    with pytest.raises(ERRORS) as err:
        put(client, table, "nested")
    assert "column 'tags'" in str(err.value)
    nanos = pa.table({"at": pa.array([1], pa.timestamp("ns"))})
    with pytest.raises(ERRORS) as err:
        put(client, nanos, "nanos")
    assert "column 'at'" in str(err.value) and "microseconds" in str(err.value)
    assert not (root / "nested.hyper").exists() and not (root / "nanos.hyper").exists()


def test_a_failed_put_leaves_the_previous_file_intact(quiver, hyper):
    client, root, _ = quiver
    before = pa.table({"at": pa.array([1, 2], pa.timestamp("s"))})
    put(client, before, "ticks")
    path = root / "ticks.hyper"
    stat = path.stat()
    # The second row's seconds overflow microseconds: the put fails after the first row went
    # into hyperd.
    after = pa.table({"at": pa.array([3, 2**62], pa.timestamp("s"))})
    with pytest.raises(ERRORS) as err:
        put(client, after, "ticks", chunk=1)
    assert "does not fit" in str(err.value)
    assert path.stat().st_ino == stat.st_ino
    _, rows = extract(hyper, path)
    assert len(rows) == 2
    assert get(client, "ticks") == before
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["ticks.hyper"]


def test_a_read_pins_the_file_it_started_on(quiver):
    client, root, _ = quiver
    first = pa.table({"n": pa.array(range(100_000), pa.int64())})
    put(client, first, "pinned")
    reader = client.do_get(fl.Ticket(json.dumps({"target": "tableau", "asset": "pinned"})))
    head = reader.read_chunk().data
    put(client, pa.table({"n": pa.array([-1], pa.int64())}), "pinned")
    rest = reader.read_all()
    assert head.num_rows + rest.num_rows == 100_000
    assert get(client, "pinned").to_pylist() == [{"n": -1}]
    # The read's pin is gone once the read has finished.
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["pinned.hyper"]


def test_hyperd_is_restarted_after_it_died(quiver):
    client, _, srv = quiver
    put(client, pa.table({"n": pa.array([1], pa.int64())}), "a")
    (pid,) = hyperd_children(srv)
    os.kill(pid, 9)
    put(client, pa.table({"n": pa.array([2], pa.int64())}), "b")
    assert get(client, "a").to_pylist() == [{"n": 1}]
    assert get(client, "b").to_pylist() == [{"n": 2}]
    (restarted,) = hyperd_children(srv)
    assert restarted != pid


def test_a_value_outside_hypers_range_is_invalid_data(quiver):
    client, root, _ = quiver
    put(client, pa.table({"d": pa.array([0], pa.date32())}), "days")
    with pytest.raises(pa.ArrowInvalid) as err:
        put(client, pa.table({"d": pa.array([0, 2**31 - 1], pa.date32())}), "days")
    assert "hyperd refused the rows" in str(err.value)
    assert get(client, "days").column("d").to_pylist() == [dt.date(1970, 1, 1)]


def test_puts_to_different_assets_run_at_once(quiver):
    client, _, srv = quiver
    from concurrent.futures import ThreadPoolExecutor

    tables = {f"many/{i}": pa.table({"n": pa.array(range(i * 1000, i * 1000 + 5000), pa.int64())}) for i in range(6)}

    def one(item):
        asset, table = item
        own = fl.connect(srv.uri)
        try:
            return put(own, table, asset, chunk=1000)["rows"]
        finally:
            own.close()

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(one, tables.items())) == [5000] * 6
    # Hyper scans in parallel: the rows come back complete, not necessarily in put order.
    for asset, table in tables.items():
        assert get(client, asset).sort_by("n") == table


def hyperd_children(srv):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
        if cmdline[0].endswith(b"hyperd") and ppid == srv.proc.pid and state != "Z":
            found.append(int(pid))
    return found


def test_hyperd_stops_with_the_server(tmp_path):
    config = tmp_path / "quiver.toml"
    config.write_text(f'[targets.tableau]\nkind = "hyper"\nhyperd = "{HYPERD}"\n')
    srv = Server(tmp_path, args=["--config", str(config)])
    try:
        client = fl.connect(srv.uri)
        put(client, pa.table({"n": pa.array([1], pa.int64())}), "a")
        client.close()
        (pid,) = hyperd_children(srv)
    finally:
        srv.stop()
    assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()


def test_a_missing_hyperd_is_named(tmp_path):
    config = tmp_path / "quiver.toml"
    config.write_text('[targets.tableau]\nkind = "hyper"\nhyperd = "/nonexistent/hyperd"\n')
    srv = Server(tmp_path, args=["--config", str(config)])
    try:
        client = fl.connect(srv.uri)
        with pytest.raises(ERRORS) as err:
            put(client, pa.table({"n": pa.array([1], pa.int64())}), "a")
        assert "cannot start hyperd at /nonexistent/hyperd" in str(err.value)
        assert "hyperd setting" in str(err.value)
        client.close()
    finally:
        srv.stop()


def test_a_crash_at_the_commit_leaves_catalog_and_file_agreeing(tmp_path):
    """kill -9 the server the moment a put's file is renamed into place, restart it, and check
    that the catalog and the extract agree and that nothing staged is left behind."""
    import signal
    import threading
    import time

    root = tmp_path / "extracts"
    config = tmp_path / "quiver.toml"
    config.write_text(f'[targets.tableau]\nkind = "hyper"\nroot = "{root}"\nhyperd = "{HYPERD}"\n')
    srv = Server(tmp_path, args=["--config", str(config)])
    client = fl.connect(srv.uri)
    put(client, pa.table({"n": pa.array(range(10), pa.int64())}), "crash")
    client.close()
    path = root / "crash.hyper"
    for round_no in range(3):
        before = path.stat().st_ino
        rows = 50_000 + round_no
        table = pa.table({"n": pa.array(range(rows), pa.int64())})
        uri = srv.uri

        def attempt():
            own = fl.connect(uri)
            try:
                put(own, table, "crash", chunk=5_000)
            except Exception:
                pass
            finally:
                own.close()

        worker = threading.Thread(target=attempt)
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and path.stat().st_ino == before:
            time.sleep(0.0005)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
        worker.join()
        srv.log.close()
        srv = Server(tmp_path, args=["--config", str(config)])
        client = fl.connect(srv.uri)
        info = client.get_flight_info(
            fl.FlightDescriptor.for_command(json.dumps({"target": "tableau", "asset": "crash"}))
        )
        back = get(client, "crash")
        client.close()
        assert info.total_records == back.num_rows
        assert back.num_rows == rows, f"round {round_no}: the renamed file holds the new put"
        assert sorted(p.name for p in root.iterdir()) == ["crash.hyper"]
    srv.stop()


def test_files_left_by_an_interrupted_put_go_at_the_next_start(tmp_path):
    root = tmp_path / "extracts"
    (root / "sales").mkdir(parents=True)
    staged = root / "sales" / "q1.hyper#8051998"
    staged.write_bytes(b"half a database")
    kept = root / "sales" / "notes#draft"
    kept.write_text("not ours")
    config = tmp_path / "quiver.toml"
    config.write_text(f'[targets.tableau]\nkind = "hyper"\nroot = "{root}"\nhyperd = "{HYPERD}"\n')
    srv = Server(tmp_path, args=["--config", str(config)])
    try:
        # The sweep runs before the server answers its first call.
        client = fl.connect(srv.uri)
        list(client.list_flights())
        client.close()
        assert not staged.exists()
        assert kept.exists()
    finally:
        srv.stop()
