"""Elasticsearch / OpenSearch targets through the real binary with a pyarrow Flight client.

Runs against osmem-server (OpenSearch API) and noida-db (Elasticsearch 8 API) from the
virtualenv, or against real clusters named by QUIVER_TEST_OPENSEARCH_URL /
QUIVER_TEST_ELASTICSEARCH_URL.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from decimal import Decimal

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from conftest import Server, _free_port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def cluster_request(url: str, path: str, method: str = "GET"):
    """One request to a cluster URL that may carry credentials; the decoded JSON reply."""
    import base64
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=host)) + path, method=method)
    if parts.username:
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request) as response:
        return json.load(response)


class SearchCluster:
    def __init__(self, kind: str, tmp_path):
        self.kind = kind
        self.prefix = f"qp{uuid.uuid4().hex[:10]}-"
        self.proc = None
        real = os.environ.get(f"QUIVER_TEST_{kind.upper()}_URL")
        if real:
            self.url = real
            return
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        bindir = os.path.dirname(sys.executable)
        if kind == "elasticsearch":
            args = [os.path.join(bindir, "noida-db"), "start", "--data-dir", str(tmp_path / "es"),
                    "--only", "elasticsearch", "--host", "127.0.0.1", "--elasticsearch-port", str(port)]
        else:
            import osmem_server

            args = [osmem_server.resolve_binary(), "-addr", f"127.0.0.1:{port}", "-no-stdin-watch"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while not _answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} test server did not start")
            time.sleep(0.1)

    def stop(self):
        if self.proc:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
            return
        # A shared cluster: delete this test's indices by name.
        names = [i["index"] for i in cluster_request(self.url, f"/_cat/indices/{self.prefix}*?format=json")]
        if names:
            cluster_request(self.url, "/" + ",".join(names), method="DELETE")


@pytest.fixture(params=["elasticsearch", "opensearch"])
def search(request, tmp_path):
    cluster = SearchCluster(request.param, tmp_path)
    config = tmp_path / "quiver.toml"
    config.write_text(
        f'[targets.search]\nkind = "{cluster.kind}"\nurl = "{cluster.url}"\n'
        f'index_prefix = "{cluster.prefix}"\n'
    )
    server = Server(tmp_path, args=["--config", str(config)])
    client = fl.connect(server.uri)
    yield client
    client.close()
    server.stop()
    cluster.stop()


def _put(client, command, table):
    descriptor = fl.FlightDescriptor.for_command(json.dumps(command))
    writer, reader = client.do_put(descriptor, table.schema)
    writer.write_table(table, max_chunksize=3)
    writer.done_writing()
    metadata = reader.read()
    writer.close()  # raises the server's error for a failed put
    return json.loads(metadata.to_pybytes())


def _get(client, ticket):
    return client.do_get(fl.Ticket(json.dumps(ticket))).read_all()


def test_round_trip_and_upsert(search):
    tz = pa.timestamp("us", tz="Europe/Berlin")
    table = pa.table({
        "id": pa.array([1, 2, 3], pa.int64()),
        "name": pa.array(["a", None, "ç"], pa.string()),
        "price": pa.array([Decimal("1.10"), Decimal("-99999999999999999.99"), None], pa.decimal128(20, 2)),
        "at": pa.array([0, 1_700_000_000_123_456, None], tz),
        "tags": pa.array([["x"], [], None], pa.list_(pa.string())),
    })
    result = _put(search, {"target": "search", "asset": "shop/orders", "mode": "overwrite", "key": ["id"]}, table)
    assert result["rows"] == 3 and result["version"] == 1
    got = _get(search, {"target": "search", "asset": "shop/orders"})
    assert got.schema == table.schema
    assert got.equals(table)

    change = pa.table({"id": pa.array([2, 4], pa.int64()), "name": pa.array(["b", "d"])})
    for _ in range(2):
        _put(search, {"target": "search", "asset": "shop/orders", "mode": "upsert", "key": ["id"]}, change)
    got = _get(search, {"target": "search", "asset": "shop/orders"}).sort_by("id")
    assert got.column("id").to_pylist() == [1, 2, 3, 4]
    assert got.column("name").to_pylist() == ["a", "b", "ç", "d"]
    # The untouched columns of an upserted document keep their values.
    assert got.column("price").to_pylist()[1] == Decimal("-99999999999999999.99")


def test_bad_data_is_refused_with_the_column_named(search):
    table = pa.table({"x": pa.array([1.0, float("nan")])})
    with pytest.raises(pa.ArrowInvalid, match="column 'x' holds NaN"):
        _put(search, {"target": "search", "asset": "bad"}, table)
    with pytest.raises(pa.ArrowKeyError, match="not found"):
        _get(search, {"target": "search", "asset": "bad"})


def test_upsert_after_a_put_without_key_keeps_one_row_per_key(search):
    people = {"target": "search", "asset": "people"}
    _put(search, {**people, "mode": "overwrite"}, pa.table({"id": [3], "v": [3]}))
    change = pa.table({"id": [3, 4], "v": [30, 40]})
    _put(search, {**people, "mode": "upsert", "key": ["id"]}, change)
    got = _get(search, people)
    assert list(zip(got.column("id").to_pylist(), got.column("v").to_pylist())) == [(3, 30), (4, 40)]

    # Documents appended without the key may repeat one: an upsert by it is refused, and
    # nothing changes.
    _put(search, {**people, "mode": "append"}, pa.table({"id": [4], "v": [41]}))
    # pyarrow reports FAILED_PRECONDITION as ArrowInvalid with the gRPC code in the message.
    with pytest.raises(pa.ArrowInvalid, match=r"precondition failed.*cannot be upserted by key \[\"id\"\]"):
        _put(search, {**people, "mode": "upsert", "key": ["id"]}, pa.table({"id": [5], "v": [50]}))
    got = _get(search, people)
    assert sorted(got.column("id").to_pylist()) == [3, 4, 4]
