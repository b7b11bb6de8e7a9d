"""Two quiver processes (replicas = 2) sharing one PostgreSQL catalog, one S3 bucket and one
PostgreSQL target: concurrent writes to one asset from both are serialized, and either
server reads a consistent result."""

import json
import threading

import pyarrow as pa
import pyarrow.flight as fl

from conftest import Server, _psql


def _config(tmp_path, catalog_url, s3):
    path = tmp_path / "quiver.toml"
    path.write_text(
        f"""
replicas = 2

[catalog]
url = "{catalog_url}"

[targets.warehouse]
kind = "postgres"
url = "{catalog_url}"
"""
        + s3.target_toml("lake", "parquet", "lake")
    )
    return path


def _table(writer: int, put: int, rows: int) -> pa.Table:
    return pa.table(
        {
            "writer": pa.array([writer] * rows, pa.int32()),
            "put": pa.array([put] * rows, pa.int32()),
            "n": pa.array(range(rows), pa.int64()),
        }
    )


def _put(uri: str, command: dict, table: pa.Table):
    client = fl.connect(uri)
    try:
        writer, reader = client.do_put(fl.FlightDescriptor.for_command(json.dumps(command)), table.schema)
        writer.write_table(table)
        writer.done_writing()
        result = json.loads(reader.read().to_pybytes())
        writer.close()
        return result
    finally:
        client.close()


def test_two_servers_share_a_catalog_and_serialize_writers(tmp_path, postgres_db, s3_server):
    config = _config(tmp_path, postgres_db, s3_server)
    servers = []
    for name in ("a", "b"):
        cwd = tmp_path / name
        cwd.mkdir()
        servers.append(Server(cwd, args=["--config", str(config)]))
    try:
        puts_per_writer = 4
        errors = []

        def writer(index: int):
            uri = servers[index % 2].uri
            try:
                for put in range(puts_per_writer):
                    # Row counts identify the put: no two puts send the same number of rows.
                    rows = 1000 + index * 100 + put
                    _put(uri, {"target": "lake", "asset": "shared/events"}, _table(index, put, rows))
                    _put(
                        uri,
                        {"target": "warehouse", "asset": "shared/log", "mode": "append"},
                        _table(index, put, 10),
                    )
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors

        total_puts = 4 * puts_per_writer
        for server in servers:
            client = fl.connect(server.uri)
            # The file on the shared root is the put the catalog recorded last.
            info = client.get_flight_info(fl.FlightDescriptor.for_path("lake", "shared", "events"))
            table = client.do_get(info.endpoints[0].ticket).read_all()
            assert table.num_rows == info.total_records
            assert len(set(table.column("put").to_pylist())) == 1
            assert len(set(table.column("writer").to_pylist())) == 1
            action = fl.Action("describe", json.dumps({"target": "lake", "asset": "shared/events"}).encode())
            entries = json.loads(next(iter(client.do_action(action))).body.to_pybytes())["history"]
            assert len(entries) == total_puts
            assert entries[0]["rows"] == table.num_rows
            # Every append landed exactly once.
            info = client.get_flight_info(fl.FlightDescriptor.for_path("warehouse", "shared", "log"))
            log = client.do_get(info.endpoints[0].ticket).read_all()
            assert log.num_rows == total_puts * 10 == info.total_records
            client.close()
        versions = _psql(postgres_db, "SELECT version FROM quiver.assets WHERE asset = 'shared/events'")
        assert int(versions) == total_puts
    finally:
        for server in servers:
            server.stop()
