"""Crash recovery: kill -9 the real server in the middle of puts to every target, restart it,
and check that every asset is exactly its last committed version and nothing is left over."""

import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

from conftest import Server, _psql
from test_search import SearchCluster, cluster_request

TARGETS = ["parquet", "duckdb", "postgres", "search"]


def _put(client, target, table):
    descriptor = fl.FlightDescriptor.for_command(json.dumps({"target": target, "asset": "crash/victim"}))
    writer, reader = client.do_put(descriptor, table.schema)
    writer.write_table(table)
    writer.done_writing()
    reader.read()
    writer.close()


def _get(client, target):
    ticket = fl.Ticket(json.dumps({"target": target, "asset": "crash/victim"}))
    return client.do_get(ticket).read_all()


def _hang_mid_put(uri, target, started):
    """Streams rows and never finishes: 4M random ones to parquet, so its writer has uploaded
    parts (they are staged files on a local root), 20k to the others."""
    client = fl.connect(uri)
    schema = pa.schema([("id", pa.int64()), ("v", pa.int64())])
    descriptor = fl.FlightDescriptor.for_command(json.dumps({"target": target, "asset": "crash/victim"}))
    try:
        writer, _ = client.do_put(descriptor, schema)
        rng = np.random.default_rng(7)
        rows, batches = (100_000, 40) if target == "parquet" else (20_000, 1)
        for i in range(batches):
            ids = np.arange(i * rows, (i + 1) * rows, dtype=np.int64)
            writer.write_batch(pa.record_batch([ids, rng.integers(0, 2**62, rows)], schema=schema))
        started.set()
        time.sleep(3600)
    except Exception:
        started.set()


def _staged_files(data: Path):
    return [p for p in data.rglob("*") if p.is_file() and p.name.rpartition("#")[2].isdigit() and "#" in p.name]


def _unaliased(url: str, prefix: str):
    """Indices of this test that no alias points to."""
    indices = cluster_request(url, f"/{prefix}*.quiver-*/_alias")
    return sorted(name for name, v in indices.items() if not v.get("aliases"))


def test_kill_9_mid_put_recovers_every_target(tmp_path, postgres_db):
    cluster = SearchCluster("opensearch", tmp_path)
    config = tmp_path / "quiver.toml"
    config.write_text(
        f"""
[targets.parquet]
kind = "parquet"
[targets.duckdb]
kind = "duckdb"
[targets.postgres]
kind = "postgres"
url = "{postgres_db}"
[targets.search]
kind = "opensearch"
url = "{cluster.url}"
index_prefix = "{cluster.prefix}"
"""
    )
    try:
        server = Server(tmp_path, args=["--config", str(config)])
        client = fl.connect(server.uri)
        committed = pa.table({"id": pa.array(range(1000), pa.int64()), "v": pa.array(range(1000), pa.int64())})
        for target in TARGETS:
            _put(client, target, committed)

        events = []
        for target in TARGETS:
            started = threading.Event()
            threading.Thread(target=_hang_mid_put, args=(server.uri, target, started), daemon=True).start()
            events.append(started)
        for started in events:
            assert started.wait(120)
        time.sleep(2)  # let the server write what it was sent
        assert _staged_files(tmp_path / "data"), "the parquet put had staged upload parts"
        assert _unaliased(cluster.url, cluster.prefix), "the search put had a loading index"

        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=20)
        server.log.close()
        client.close()

        restarted = Server(tmp_path, args=["--config", str(config)])
        client = fl.connect(restarted.uri)
        for target in TARGETS:
            got = _get(client, target)
            assert got.equals(committed.cast(got.schema)), f"{target} holds its last committed version"
            info = json.loads(
                next(iter(client.do_action(fl.Action("describe", json.dumps(
                    {"target": target, "asset": "crash/victim"}).encode())))).body.to_pybytes()
            )
            assert info["version"] == 1, info
        assert _staged_files(tmp_path / "data") == []
        assert _unaliased(cluster.url, cluster.prefix) == []
        assert _psql(postgres_db, "SELECT count(*) FROM pg_tables WHERE tablename LIKE '\\_\\_quiver%'") == "0"
        assert "removed what interrupted puts left behind" in restarted.logs()
        client.close()
        restarted.stop()
    finally:
        cluster.stop()
