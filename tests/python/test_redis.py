"""The Redis target through the real binary: puts with a pyarrow Flight client, then the keys
read the way an application would, with the `redis` client; DoGet returns the exact types.

Starts Debian's `redis-server` on a free port with persistence off (scripts/redis installs it),
or uses the Redis named by QUIVER_TEST_REDIS_URL.
"""

import datetime
import io
import json
import os
import subprocess
import time
import uuid
from decimal import Decimal

import pyarrow as pa
import pyarrow.flight as fl
import pytest
import redis

from conftest import Server, _free_port


class RedisServer:
    """A Redis for one test: `url`, and `prefix`, which starts every key of its targets."""

    def __init__(self, tmp_path):
        self.prefix = f"qp{uuid.uuid4().hex[:10]}"
        self.proc = None
        self.url = os.environ.get("QUIVER_TEST_REDIS_URL")
        if not self.url:
            port = _free_port()
            self.url = f"redis://127.0.0.1:{port}/0"
            (tmp_path / "redis").mkdir()
            try:
                self.proc = subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(tmp_path / "redis")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            except FileNotFoundError:
                raise RuntimeError("redis-server is not installed: run scripts/redis or set QUIVER_TEST_REDIS_URL")
        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    def target_toml(self, name, extra=""):
        return f'[targets.{name}]\nkind = "redis"\nurl = "{self.url}"\nprefix = "{self.prefix}.{name}"\n{extra}\n'

    def key(self, target, rest):
        return f"{{{self.prefix}.{target}:{rest}"

    def keys(self):
        return sorted(k.decode() for k in self.client.scan_iter(match=f"{{{self.prefix}.*", count=1000))

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait(timeout=10)
        else:
            for key in self.client.scan_iter(match=f"{{{self.prefix}.*", count=1000):
                self.client.unlink(key)
        self.client.close()


@pytest.fixture
def redis_server(tmp_path):
    srv = RedisServer(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
def quiver(tmp_path, redis_server):
    config = tmp_path / "quiver.toml"
    config.write_text(
        redis_server.target_toml("redis") + redis_server.target_toml("rhash", 'layout = "hash"')
    )
    server = Server(tmp_path, args=["--config", str(config)])
    client = fl.connect(server.uri)
    yield client
    client.close()
    server.stop()


def _put(client, command, table):
    writer, reader = client.do_put(fl.FlightDescriptor.for_command(json.dumps(command)), table.schema)
    writer.write_table(table)
    writer.done_writing()
    answer = reader.read()
    writer.close()  # raises the put's error, if any
    return json.loads(answer.to_pybytes())


def _get(client, ticket):
    return client.do_get(fl.Ticket(json.dumps(ticket))).read_all()


TYPES = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "i8": pa.array([-128, None, 127], pa.int8()),
        "u64": pa.array([0, None, 2**64 - 1], pa.uint64()),
        "f64": pa.array([0.1, None, 1e-300], pa.float64()),
        "flag": pa.array([True, None, False]),
        "name": pa.array(["héllo", None, ""], pa.string()),
        "raw": pa.array([b"\x00\xff", None, b""], pa.binary()),
        "day": pa.array([datetime.date(2024, 1, 31), None, datetime.date(1, 1, 1)], pa.date32()),
        "at": pa.array([datetime.datetime(2024, 1, 31, 12, 30, 0, 123456), None, datetime.datetime(1970, 1, 1)],
                       pa.timestamp("us", tz="UTC")),
        "amount": pa.array([Decimal("12.345"), None, Decimal("-0.001")], pa.decimal128(10, 3)),
        "tags": pa.array([["a", "b"], None, []], pa.list_(pa.string())),
        "color": pa.array(["red", None, "red"], pa.string()).dictionary_encode(),
    }
)


def test_hash_layout_rows_are_hashes_an_application_reads(quiver, redis_server):
    result = _put(quiver, {"target": "rhash", "asset": "shop/items", "key": ["id"]}, TYPES)
    assert result["rows"] == 3
    r = redis_server.client
    pointer = {k.decode(): v.decode() for k, v in r.hgetall(redis_server.key("rhash", "shop/items}")).items()}
    assert pointer["layout"] == "hash" and pointer["key"] == '["id"]' and pointer["rows"] == "3"
    row = redis_server.key("rhash", f"shop/items}}:g{pointer['generation']}:")
    first = r.hgetall(row + "1")
    assert first == {
        b"id": b"1",
        b"i8": b"-128",
        b"u64": b"0",
        b"f64": b"0.1",
        b"flag": b"true",
        b"name": "héllo".encode(),
        b"raw": b"\x00\xff",
        b"day": b"2024-01-31",
        b"at": b"2024-01-31T12:30:00.123456Z",
        b"amount": b"12.345",
        b"tags": b'["a","b"]',
        b"color": b"red",
    }
    assert r.hgetall(row + "2") == {b"id": b"2"}, "nulls are absent fields"
    assert r.hget(row + "3", "u64") == b"18446744073709551615"

    got = _get(quiver, {"target": "rhash", "asset": "shop/items"}).sort_by("id")
    assert got.schema == TYPES.schema
    assert got.equals(TYPES), "DoGet rebuilds the exact types and values"

    # An upsert replaces whole rows by key.
    change = TYPES.slice(0, 1).set_column(5, "name", pa.array([None], pa.string()))
    _put(quiver, {"target": "rhash", "asset": "shop/items", "key": ["id"], "mode": "upsert"}, change)
    assert r.hget(row + "1", "name") is None
    assert _get(quiver, {"target": "rhash", "asset": "shop/items"}).num_rows == 3


def test_table_layout_chunks_are_arrow_ipc_streams(quiver, redis_server):
    table = pa.table({"id": pa.array(range(50_000), pa.int64()), "v": pa.array([f"v{i}" for i in range(50_000)])})
    _put(quiver, {"target": "redis", "asset": "big/table"}, table)
    r = redis_server.client
    pointer = {k.decode(): v.decode() for k, v in r.hgetall(redis_server.key("redis", "big/table}")).items()}
    assert pointer["layout"] == "table"
    assert pointer["format"] == "arrow-ipc-stream;compression=zstd"
    chunks = json.loads(pointer["chunks"])
    read = pa.concat_tables(pa.ipc.open_stream(io.BytesIO(r.get(chunk))).read_all() for chunk in chunks)
    assert read.equals(table), "the chunks, decoded in order, are the asset"

    got = _get(quiver, {"target": "redis", "asset": "big/table"})
    assert got.equals(table)
    typed = _get(quiver, {"target": "redis", "asset": "big/table", "columns": ["v"]})
    assert typed.column_names == ["v"]

    _put(quiver, {"target": "redis", "asset": "big/table", "mode": "append"}, table.slice(0, 10))
    assert _get(quiver, {"target": "redis", "asset": "big/table"}).num_rows == 50_010

    # An overwrite leaves the new chunks only.
    _put(quiver, {"target": "redis", "asset": "big/table"}, table.slice(0, 5))
    keys = [k for k in redis_server.keys() if k.startswith(redis_server.key("redis", "big/table}:v"))]
    new = json.loads(r.hget(redis_server.key("redis", "big/table}"), "chunks"))
    assert keys == sorted(new)


def test_table_layout_round_trips_exact_types(quiver):
    _put(quiver, {"target": "redis", "asset": "types"}, TYPES)
    got = _get(quiver, {"target": "redis", "asset": "types"})
    assert got.schema == TYPES.schema
    assert got.equals(TYPES)


def test_hash_layout_needs_a_key(quiver):
    with pytest.raises(pa.ArrowInvalid, match='"key"'):
        _put(quiver, {"target": "rhash", "asset": "nokey"}, TYPES)
    with pytest.raises(pa.ArrowInvalid, match="precondition failed.*does not support mode 'upsert'"):
        _put(quiver, {"target": "redis", "asset": "t", "key": ["id"], "mode": "upsert"}, TYPES)
