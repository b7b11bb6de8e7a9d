"""Flight SQL over the catalog, through the ADBC Flight SQL driver: every asset a caller may
read is a table "<target>"."<asset path>", whatever target stores it."""

import json
import subprocess

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as fl
import pytest

from conftest import Server, _binary


def _put(client, target, asset, table):
    descriptor = fl.FlightDescriptor.for_command(json.dumps({"target": target, "asset": asset}))
    writer, reader = client.do_put(descriptor, table.schema)
    writer.write_table(table)
    writer.done_writing()
    reader.read()
    writer.close()


def _orders():
    return pa.table(
        {
            "id": pa.array(range(1, 1001), pa.int64()),
            "customer": pa.array([i % 10 for i in range(1000)], pa.int32()),
            "amount": pa.array([float(i) / 4 for i in range(1000)], pa.float64()),
        }
    )


def _customers():
    return pa.table(
        {
            "customer": pa.array(range(10), pa.int32()),
            "name": pa.array([f"c{i}" for i in range(10)]),
        }
    )


@pytest.fixture
def loaded(server):
    client = fl.connect(server.uri)
    _put(client, "parquet", "sales/orders", _orders())
    _put(client, "duckdb", "crm/customers", _customers())
    _put(client, "arrow", "big/numbers", pa.table({"n": pa.array(range(1_000_000), pa.int64())}))
    client.close()
    with flight_sql.connect(server.uri, autocommit=True) as conn:
        yield conn


def _query(conn, sql, parameters=None):
    with conn.cursor() as cursor:
        cursor.execute(sql, parameters)
        return cursor.fetch_arrow_table()


def test_queries_read_assets_of_every_target_and_join_them(loaded):
    got = _query(loaded, 'SELECT count(*) AS n, sum(amount) AS total FROM "parquet"."sales/orders"')
    assert got.to_pylist() == [{"n": 1000, "total": sum(i / 4 for i in range(1000))}]

    joined = _query(
        loaded,
        'SELECT c.name, count(*) AS n FROM "parquet"."sales/orders" o '
        'JOIN "duckdb"."crm/customers" c USING (customer) GROUP BY c.name ORDER BY c.name',
    )
    assert joined.column("name").to_pylist() == [f"c{i}" for i in range(10)]
    assert joined.column("n").to_pylist() == [100] * 10

    # Types come through: int32 stays int32.
    typed = _query(loaded, 'SELECT customer FROM "duckdb"."crm/customers" ORDER BY customer LIMIT 3')
    assert typed.schema.field("customer").type == pa.int32()
    assert typed.column("customer").to_pylist() == [0, 1, 2]

    # A self-join reads the table once per reference.
    pairs = _query(
        loaded,
        'SELECT count(*) AS n FROM "duckdb"."crm/customers" a JOIN "duckdb"."crm/customers" b '
        "ON a.customer <= b.customer",
    )
    assert pairs.to_pylist() == [{"n": 55}]


def test_prepared_statements_bind_parameters(loaded):
    got = _query(
        loaded,
        'SELECT id, amount FROM "parquet"."sales/orders" WHERE customer = ? AND id > ? ORDER BY id',
        parameters=(3, 900),
    )
    assert got.column("id").to_pylist() == [904, 914, 924, 934, 944, 954, 964, 974, 984, 994]
    text = _query(loaded, 'SELECT name FROM "duckdb"."crm/customers" WHERE name = ?', parameters=("c7",))
    assert text.to_pylist() == [{"name": "c7"}]


def test_large_results_stream_whole(loaded):
    with loaded.cursor() as cursor:
        cursor.execute('SELECT n FROM "arrow"."big/numbers"')
        reader = cursor.fetch_record_batch()
        rows, total, batches = 0, 0, 0
        for batch in reader:
            batches += 1
            rows += batch.num_rows
            total += pa.compute.sum(batch.column(0)).as_py() or 0
    assert rows == 1_000_000
    assert total == sum(range(1_000_000))
    assert batches > 1, "the result arrived as one batch"


def test_catalog_metadata_lists_targets_assets_and_columns(loaded):
    objects = loaded.adbc_get_objects(depth="all").read_all().to_pylist()
    assert [c["catalog_name"] for c in objects] == ["quiver"]
    schemas = {s["db_schema_name"]: s for s in objects[0]["catalog_db_schemas"]}
    assert {"parquet", "duckdb", "arrow"} <= set(schemas)
    tables = {t["table_name"]: t for t in schemas["parquet"]["db_schema_tables"]}
    assert list(tables) == ["sales/orders"]
    columns = [c["column_name"] for c in tables["sales/orders"]["table_columns"]]
    assert columns == ["id", "customer", "amount"]

    schema = loaded.adbc_get_table_schema("crm/customers", db_schema_filter="duckdb")
    assert schema.names == ["customer", "name"]
    assert schema.field("customer").type == pa.int32()
    assert loaded.adbc_get_table_types() == ["TABLE"]
    info = loaded.adbc_get_info()
    assert info["vendor_name"] == "Quiver"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "ATTACH '/tmp/quiver-sql-escape.duckdb' AS escape",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "COPY (SELECT 1) TO '/tmp/quiver-sql-escape.csv'",
        'CREATE TABLE "parquet".t AS SELECT 1',
        'DROP VIEW "parquet"."sales/orders"',
    ],
)
def test_sql_cannot_reach_past_the_assets(loaded, sql):
    with pytest.raises(adbc_driver_manager.Error):
        _query(loaded, sql)
    # The assets are untouched.
    assert _query(loaded, 'SELECT count(*) AS n FROM "parquet"."sales/orders"').to_pylist() == [{"n": 1000}]


def test_errors_name_the_problem(loaded):
    with pytest.raises(adbc_driver_manager.ProgrammingError, match="nope"):
        _query(loaded, 'SELECT * FROM "parquet"."nope"')
    with pytest.raises(adbc_driver_manager.Error, match="only queries"):
        _query(loaded, "CREATE VIEW v AS SELECT 1")


def _new_token():
    out = subprocess.run([_binary(), "hash-token"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(": ", 1) for line in out.strip().splitlines())
    return fields["token"], fields["token_sha256"]


def test_grants_decide_which_tables_exist(tmp_path):
    writer_token, writer_sha = _new_token()
    reader_token, reader_sha = _new_token()
    (tmp_path / "quiver.toml").write_text(
        f"""
[auth]
anonymous = "none"

[[auth.tokens]]
name = "etl"
token_sha256 = "{writer_sha}"
write = ["*"]
read = ["*"]

[[auth.tokens]]
name = "dashboards"
token_sha256 = "{reader_sha}"
read = ["parquet"]
"""
    )
    server = Server(tmp_path, args=["--config", "quiver.toml"])
    try:
        client = fl.connect(server.uri)
        options = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {writer_token}".encode())])
        for target, asset, table in [("parquet", "sales/orders", _orders()), ("duckdb", "crm/customers", _customers())]:
            descriptor = fl.FlightDescriptor.for_command(json.dumps({"target": target, "asset": asset}))
            writer, reader = client.do_put(descriptor, table.schema, options=options)
            writer.write_table(table)
            writer.done_writing()
            reader.read()
            writer.close()
        client.close()

        with pytest.raises(adbc_driver_manager.Error):
            with flight_sql.connect(server.uri, autocommit=True) as anonymous:
                _query(anonymous, "SELECT 1")

        kwargs = {"adbc.flight.sql.authorization_header": f"Bearer {reader_token}"}
        with flight_sql.connect(server.uri, db_kwargs=kwargs, autocommit=True) as conn:
            assert _query(conn, 'SELECT count(*) AS n FROM "parquet"."sales/orders"').to_pylist() == [{"n": 1000}]
            with pytest.raises(adbc_driver_manager.ProgrammingError, match="customers"):
                _query(conn, 'SELECT * FROM "duckdb"."crm/customers"')
            objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
            tables = [
                (s["db_schema_name"], t["table_name"])
                for s in objects[0]["catalog_db_schemas"]
                for t in s["db_schema_tables"] or []
            ]
            assert tables == [("parquet", "sales/orders")]
    finally:
        server.stop()


def test_adbc_ingest_writes_assets_through_a_put(loaded):
    with loaded.cursor() as cursor:
        assert cursor.adbc_ingest("crm/regions", _customers(), mode="create", db_schema_name="duckdb") == 10
        with pytest.raises(adbc_driver_manager.Error, match="already exists"):
            cursor.adbc_ingest("crm/regions", _customers(), mode="create", db_schema_name="duckdb")
        assert cursor.adbc_ingest("crm/regions", _customers(), mode="append", db_schema_name="duckdb") == 10
        with pytest.raises(adbc_driver_manager.Error, match="not found"):
            cursor.adbc_ingest("crm/nowhere", _customers(), mode="append", db_schema_name="duckdb")
        # A file target takes what it supports: a replace is an overwrite.
        assert cursor.adbc_ingest("crm/regions", _orders(), mode="replace", db_schema_name="parquet") == 1000
    # A cursor keeps the options of its last ingest: a fresh one names no target.
    with loaded.cursor() as cursor:
        with pytest.raises(adbc_driver_manager.Error, match="db_schema_name"):
            cursor.adbc_ingest("crm/regions", _customers(), mode="append")
    got = _query(loaded, 'SELECT count(*) AS n, count(DISTINCT name) AS names FROM "duckdb"."crm/regions"')
    assert got.to_pylist() == [{"n": 20, "names": 10}]
    with loaded.cursor() as cursor:
        cursor.adbc_ingest("crm/regions", _customers().slice(0, 3), mode="replace", db_schema_name="duckdb")
    assert _query(loaded, 'SELECT count(*) AS n FROM "duckdb"."crm/regions"').to_pylist() == [{"n": 3}]
    assert _query(loaded, 'SELECT count(*) AS n FROM "parquet"."crm/regions"').to_pylist() == [{"n": 1000}]


def test_a_query_past_the_timeout_is_stopped(tmp_path):
    (tmp_path / "quiver.toml").write_text('[sql]\ntimeout_secs = 1\nthreads = 1\n')
    server = Server(tmp_path, args=["--config", "quiver.toml"])
    try:
        with flight_sql.connect(server.uri, autocommit=True) as conn:
            with pytest.raises(adbc_driver_manager.Error, match="timeout_secs"):
                _query(conn, "SELECT count(*) FROM range(100000000) a, range(100000) b WHERE a.range + b.range = -1")
            # The server answers the next query.
            assert _query(conn, "SELECT 42 AS x").to_pylist() == [{"x": 42}]
    finally:
        server.stop()


def test_sql_settings_are_checked_at_start(tmp_path):
    (tmp_path / "quiver.toml").write_text('[sql]\nmemory_limit = "lots"\n')
    result = subprocess.run(
        [_binary(), "serve", "--config", "quiver.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "sql.memory_limit" in result.stderr
