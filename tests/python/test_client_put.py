"""Client.put's batching and streaming, retries, and connection options, against the real server."""

import threading
import time

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import conftest
import quiver_flight
from conftest import Server
from test_security import _certificates, _hash_password

MESSAGE_LIMIT = 4 << 20


@pytest.fixture
def small_server(tmp_path):
    """A server refusing messages over 4 MiB (its reads send at most about 2 MiB)."""
    (tmp_path / "quiver.toml").write_text(f"[limits]\nmax_message_bytes = {MESSAGE_LIMIT}\n")
    srv = Server(tmp_path, args=["--config", "quiver.toml"])
    yield srv
    srv.stop()


def _wide_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(7)
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "value": pa.array(rng.random(rows)),
            "label": pa.array([f"row-{i:08d}" for i in range(rows)]),
        }
    )


def test_a_batch_over_the_message_limit_is_split_and_round_trips(small_server):
    table = _wide_table(800_000).combine_chunks()
    assert table.to_batches()[0].nbytes > 4 * MESSAGE_LIMIT, "one batch, several times the limit"
    with quiver_flight.Client(small_server.uri) as c:
        # Sent whole, the server refuses the batch: the limit is real.
        with pytest.raises(quiver_flight.ResourceExhausted) as err:
            c.put(table, "big/whole", target="arrow", max_batch_bytes=1 << 30)
        assert not err.value.retryable
        # The client slices it under its byte budget.
        with quiver_flight.Client(small_server.uri, max_batch_bytes=MESSAGE_LIMIT // 2) as small:
            result = small.put(table, "big/split", target="parquet")
        assert result.rows == table.num_rows
        back = c.get("big/split", target="parquet")
        assert back.equals(table)
        # Every stored batch respected the budget (the arrow target keeps batches as sent).
        small_batches = quiver_flight.Client(small_server.uri, max_batch_bytes=MESSAGE_LIMIT // 2)
        small_batches.put(table, "big/arrow", target="arrow")
        small_batches.close()
        sizes = [b.nbytes for b in c.get_reader("big/arrow", target="arrow")]
        assert len(sizes) > 4 and max(sizes) <= MESSAGE_LIMIT // 2


def test_pandas_and_polars_frames_are_sent_in_slices(small_server):
    frame = _wide_table(100_000).to_pandas()
    with quiver_flight.Client(small_server.uri, max_batch_bytes=MESSAGE_LIMIT // 4) as c:
        assert c.put(frame, "frames/pandas", target="arrow").rows == len(frame)
        back = c.get("frames/pandas", target="arrow").to_pandas()
        pd.testing.assert_frame_equal(back, frame)
        assert len(list(c.get_reader("frames/pandas", target="arrow"))) > 1

        polars_frame = pl.from_arrow(_wide_table(100_000))
        assert c.put(polars_frame, "frames/polars", target="duckdb").rows == polars_frame.height
        back_pl = pl.from_arrow(c.get("frames/polars", target="duckdb")).sort("id")
        assert back_pl.equals(polars_frame)


def test_polars_lazy_frame_is_streamed_not_collected(server, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the LazyFrame was collected whole")

    monkeypatch.setattr(pl.LazyFrame, "collect", refuse)
    lazy = pl.LazyFrame({"id": list(range(10_000))}).with_columns(double=pl.col("id") * 2).filter(pl.col("id") % 2 == 0)
    with quiver_flight.Client(server.uri) as c:
        assert c.put(lazy, "lazy/evens", target="parquet").rows == 5_000
        back = c.get("lazy/evens", target="parquet")
    assert back.column("double").to_pylist()[:3] == [0, 4, 8]
    assert back.schema.names == ["id", "double"]


class _ArrowStream:
    """A foreign object exporting the Arrow C stream interface (as DuckDB, Polars or
    nanoarrow objects do)."""

    def __init__(self, table):
        self._table = table

    def __arrow_c_stream__(self, requested_schema=None):
        return self._table.__arrow_c_stream__(requested_schema)


def test_arrow_c_stream_objects_and_record_batches(server):
    table = _wide_table(1_000)
    with quiver_flight.Client(server.uri) as c:
        assert c.put(_ArrowStream(table), "c/stream", target="arrow").rows == 1_000
        assert c.get("c/stream", target="arrow").equals(table)
        batch = table.combine_chunks().to_batches()[0]
        assert c.put(batch, "c/batch", target="arrow", max_batch_bytes=4096).rows == 1_000
        assert c.get("c/batch", target="arrow").equals(table)


def test_idempotent_put_is_retried_until_the_server_answers(tmp_path, monkeypatch):
    """A put with an idempotency key outlives a server that is not up yet."""
    port = conftest._free_port()
    table = pa.table({"x": [1, 2, 3]})
    started = {}

    def start_later():
        time.sleep(1.0)
        monkeypatch.setattr(conftest, "_free_port", lambda: port)
        started["server"] = Server(tmp_path)

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        with quiver_flight.Client(f"grpc://127.0.0.1:{port}", retries=30, retry_backoff=0.05, timeout=5) as c:
            # Without a key a put is never repeated: the first failure is raised.
            with pytest.raises(quiver_flight.Unavailable):
                c.put(table, "retried", target="parquet")
            result = c.put(table, "retried", target="parquet", idempotency_key="retry-1")
        thread.join()
        assert result.rows == 3 and not result.replayed
        with quiver_flight.Client(started["server"].uri) as c:
            assert c.get("retried", target="parquet").equals(table)
            assert c.put(table, "retried", target="parquet", idempotency_key="retry-1").replayed
    finally:
        thread.join()
        if "server" in started:
            started["server"].stop()


def test_environment_defaults_and_basic_auth(tmp_path, monkeypatch):
    (tmp_path / "quiver.toml").write_text(
        f"""
[auth]
anonymous = "none"

[[auth.users]]
name = "etl"
password_hash = "{_hash_password('correct horse')}"
write = ["parquet"]
read = ["parquet"]
"""
    )
    srv = Server(tmp_path, args=["--config", "quiver.toml"])
    try:
        monkeypatch.setenv("QUIVER_SERVER", srv.uri)
        with quiver_flight.Client() as anonymous:
            assert anonymous.location == srv.uri
            with pytest.raises(quiver_flight.Unauthenticated) as err:
                anonymous.list()
            assert err.value.code == "UNAUTHENTICATED"
        with pytest.raises(quiver_flight.Unauthenticated):
            quiver_flight.Client(username="etl", password="wrong")
        with quiver_flight.Client(username="etl", password="correct horse") as c:
            c.put(pa.table({"x": [1]}), "sales/daily", target="parquet")
            assert [a.asset for a in c.list()] == ["sales/daily"]
            with pytest.raises(quiver_flight.PermissionDenied):
                c.put(pa.table({"x": [1]}), "t", target="arrow")
    finally:
        srv.stop()


def test_mutual_tls(tmp_path):
    _certificates(tmp_path)
    (tmp_path / "quiver.toml").write_text(
        f"""
[tls]
cert_file = "{tmp_path / 'server.pem'}"
key_file = "{tmp_path / 'server.key'}"
client_ca_file = "{tmp_path / 'ca.pem'}"
"""
    )
    srv = Server(tmp_path, args=["--config", "quiver.toml"])
    try:
        uri = f"grpc+tls://localhost:{srv.port}"
        ca = (tmp_path / "ca.pem").read_bytes()
        with quiver_flight.Client(
            uri,
            tls_root_certs=ca,
            cert_chain=(tmp_path / "client.pem").read_bytes(),
            private_key=(tmp_path / "client.key").read_bytes(),
        ) as c:
            c.put(pa.table({"x": [1, 2]}), "secure/t", target="arrow")
            assert c.get("secure/t", target="arrow").num_rows == 2
        with pytest.raises(ValueError, match="both cert_chain and private_key"):
            quiver_flight.Client(uri, cert_chain=b"x")
    finally:
        srv.stop()


def test_version_and_typed_results():
    assert quiver_flight.__version__ == "0.1.0"
    assert quiver_flight.DEFAULT_MAX_BATCH_BYTES < 256 * 1024 * 1024
