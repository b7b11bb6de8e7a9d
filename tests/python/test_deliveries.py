"""The delivery targets (webhook, graphql, email) through the real binary, each against a real
server the test starts on 127.0.0.1: an HTTP receiver written here (http.server) that checks
signatures and fails some requests to exercise the retries, a strawberry GraphQL server, and an
aiosmtpd SMTP server writing a Maildir.
"""

import datetime
import email
import email.policy
import hashlib
import hmac
import io
import json
import mailbox
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.flight as fl
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
import strawberry
import uvicorn
from strawberry.asgi import GraphQL

from conftest import Server, _free_port

SECRET = "whsec_test"


class Receiver:
    """An HTTP server recording every request. `plan` maps a request's sequence number to the
    statuses its first attempts get (then 200); `always` answers every request with one status."""

    def __init__(self, secret=SECRET, plan=None, always=None, always_body=b"", hold=None):
        self.secret = secret
        # Requests to this path wait, once `held` is set, until `release` is.
        self.hold, self.held, self.release = hold, threading.Event(), threading.Event()
        self.plan = {k: list(v) for k, v in (plan or {}).items()}
        self.always = always
        self.always_body = always_body
        self.attempts = []  # (method, path, headers, body, status answered)
        self.delivered = {}  # idempotency key -> (headers, body), first accepted attempt
        self.accepted = {}  # idempotency key -> how many attempts were answered 200
        self.bad_signatures = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.send_response(200)
                self.end_headers()

            def _receive(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == receiver.hold:
                    receiver.held.set()
                    receiver.release.wait(timeout=60)
                status, extra, answer = receiver._answer(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = do_PUT = do_PATCH = _receive

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                # A sender killed mid-request (the crash test) leaves a broken pipe.
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self.server = QuietServer(("127.0.0.1", _free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _signature_ok(self, headers, body):
        if self.secret is None:
            return "x-quiver-signature" not in headers
        value = headers.get("x-quiver-signature", "")
        parts = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
        if "t" not in parts or "v1" not in parts:
            return False
        if abs(time.time() - int(parts["t"])) > 300:
            return False
        expected = hmac.new(self.secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, parts["v1"])

    def _answer(self, method, path, headers, body):
        with self.lock:
            key = headers.get("idempotency-key")
            extra, answer = {}, b"ok"
            if not self._signature_ok(headers, body):
                self.bad_signatures.append(key)
                status, answer = 401, b"bad signature"
            elif self.always is not None:
                status, answer = self.always, self.always_body
            else:
                seq = headers.get("x-quiver-sequence")
                planned = self.plan.get(int(seq), []) if seq else []
                if planned:
                    status = planned.pop(0)
                    if status == 429:
                        extra["Retry-After"] = "1"
                    answer = b"try later"
                else:
                    status = 200
            self.attempts.append((method, path, headers, body, status))
            if status == 200:
                self.accepted[key] = self.accepted.get(key, 0) + 1
                self.delivered.setdefault(key, (headers, body))
            return status, extra, answer

    def data_requests(self):
        """The accepted row requests, in sequence order."""
        return sorted(
            ((h, b) for k, (h, b) in self.delivered.items() if not k.endswith("-commit")),
            key=lambda hb: int(hb[0]["x-quiver-sequence"]),
        )

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(plan={1: [503], 2: [429]})
    yield r
    r.stop()


def _wait_for(ready, what, seconds=20):
    """Polls `ready()` until it is true; a server that never gets there fails the test."""
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def _start(tmp_path, toml):
    config = tmp_path / "quiver.toml"
    config.write_text(toml)
    return Server(tmp_path, args=["--config", str(config)])


def _webhook_toml(name, url, extra=""):
    return (
        f'[targets.{name}]\nkind = "webhook"\nurl = "{url}"\nsecret = "{SECRET}"\n'
        f"backoff_ms = 50\nmax_backoff_secs = 2\n{extra}\n"
    )


def _put(client, command, table):
    writer, reader = client.do_put(fl.FlightDescriptor.for_command(json.dumps(command)), table.schema)
    writer.write_table(table)
    writer.done_writing()
    answer = reader.read()
    writer.close()
    return json.loads(answer.to_pybytes())


def _action(client, name, body):
    return json.loads(next(client.do_action(fl.Action(name, json.dumps(body).encode()))).body.to_pybytes())


ROWS = pa.table(
    {
        "id": pa.array(range(10), pa.int64()),
        "name": pa.array([f"n{i}" if i % 3 else None for i in range(10)], pa.string()),
        "score": pa.array([i / 4 for i in range(10)], pa.float64()),
    }
)


@pytest.fixture
def hooks(tmp_path, receiver):
    server = _start(
        tmp_path,
        _webhook_toml("hook", f"{receiver.url}/in", f'batch_rows = 4\ncommit_url = "{receiver.url}/commit"')
        + _webhook_toml("hook_arrow", f"{receiver.url}/arrow", 'format = "arrow"\nbatch_bytes = 1024')
        + _webhook_toml("hook_parquet", f"{receiver.url}/parquet", 'format = "parquet"\nbatch_rows = 3')
        + _webhook_toml(
            "hook_ndjson",
            f"{receiver.url}/nd?token=qt0ken",
            'format = "ndjson"\nmethod = "PUT"\nheaders = { Authorization = "Bearer b3arer" }',
        )
        + _webhook_toml("hook_down", "http://127.0.0.1:9/in", "retries = 1"),
    )
    client = fl.connect(server.uri)
    yield client
    client.close()
    server.stop()


def test_json_rows_arrive_exactly_once_per_key_after_retries(hooks, receiver):
    result = _put(hooks, {"target": "hook", "asset": "shop/orders"}, ROWS)
    assert result["rows"] == 10 and result["version"] == 1
    assert receiver.bad_signatures == []
    requests = receiver.data_requests()
    assert [int(h["x-quiver-rows"]) for h, _ in requests] == [4, 4, 2]
    # Each idempotency key was accepted once; the first two needed a retry (503, then 429).
    keys = [h["idempotency-key"] for h, _ in requests]
    assert all(receiver.accepted[k] == 1 for k in keys)
    statuses = {}
    for _, path, headers, _, status in receiver.attempts:
        statuses.setdefault(headers["idempotency-key"], []).append(status)
    assert statuses[keys[0]] == [503, 200] and statuses[keys[1]] == [429, 200] and statuses[keys[2]] == [200]
    rows = [row for _, body in requests for row in json.loads(body)]
    assert rows == ROWS.to_pylist()
    headers = requests[0][0]
    assert headers["x-quiver-asset"] == "shop/orders"
    assert headers["x-quiver-version"]
    assert headers["content-type"] == "application/json"
    put_id = headers["x-quiver-put"]
    assert keys == [f"{put_id}-1", f"{put_id}-2", f"{put_id}-3"]
    # Two-phase delivery: one commit request after the rows, listing them.
    commits = [(h, b) for m, p, h, b, s in receiver.attempts if p == "/commit"]
    assert len(commits) == 1
    commit = json.loads(commits[0][1])
    assert commit["requests"] == keys and commit["rows"] == 10 and commit["put"] == put_id
    assert commits[0][0]["idempotency-key"] == f"{put_id}-commit"
    assert receiver.attempts[-1][1] == "/commit"

    described = _action(hooks, "describe", {"target": "hook", "asset": "shop/orders"})
    assert described["rows"] == 10
    assert put_id in json.dumps(described)
    with pytest.raises(pa.ArrowInvalid, match="write-only"):
        hooks.do_get(fl.Ticket(json.dumps({"target": "hook", "asset": "shop/orders"}))).read_all()


def test_arrow_parquet_and_ndjson_bodies_read_back(hooks, receiver):
    big = pa.table({"id": pa.array(range(500), pa.int64()), "text": pa.array([f"row {i}" * 3 for i in range(500)])})
    _put(hooks, {"target": "hook_arrow", "asset": "big"}, big)
    arrow_bodies = [b for h, b in receiver.data_requests() if h["x-quiver-asset"] == "big"]
    assert len(arrow_bodies) > 1 and all(len(b) <= 1024 for b in arrow_bodies)
    got = pa.concat_tables(ipc.open_stream(b).read_all() for b in arrow_bodies)
    assert got.equals(big)

    _put(hooks, {"target": "hook_parquet", "asset": "pq"}, ROWS)
    pq_bodies = [b for h, b in receiver.data_requests() if h["x-quiver-asset"] == "pq"]
    assert len(pq_bodies) == 4
    assert pa.concat_tables(pq.read_table(io.BytesIO(b)) for b in pq_bodies).equals(ROWS)

    _put(hooks, {"target": "hook_ndjson", "asset": "nd", "mode": "append"}, ROWS)
    (headers, body), = [(h, b) for h, b in receiver.data_requests() if h["x-quiver-asset"] == "nd"]
    assert headers["content-type"] == "application/x-ndjson" and headers["x-quiver-mode"] == "append"
    assert [m for m, p, *_ in receiver.attempts if p == "/nd?token=qt0ken"] == ["PUT"]
    assert headers["authorization"] == "Bearer b3arer"
    assert [json.loads(line) for line in body.decode().splitlines()] == ROWS.to_pylist()


def test_json_mapping_of_arrow_types(hooks, receiver):
    table = pa.table(
        {
            "day": pa.array([datetime.date(2024, 1, 31), None], pa.date32()),
            "at": pa.array([datetime.datetime(2024, 1, 31, 12, 30, 0, 123456), None], pa.timestamp("us", tz="UTC")),
            "amount": pa.array([Decimal("12.345"), None], pa.decimal128(10, 3)),
            "big": pa.array([2**63 - 1, None], pa.int64()),
            "raw": pa.array([b"\x00\xff", None], pa.binary()),
            "tags": pa.array([["a", "b"], None], pa.list_(pa.string())),
            "flag": pa.array([True, None]),
        }
    )
    _put(hooks, {"target": "hook", "asset": "types"}, table)
    (_, body), = [(h, b) for h, b in receiver.data_requests() if h["x-quiver-asset"] == "types"]
    rows = json.loads(body, parse_float=Decimal)  # decimals are numbers with their exact digits
    assert b'"amount":12.345,' in body
    assert rows[1] == {k: None for k in table.column_names}
    assert rows[0] == {
        "day": "2024-01-31",
        "at": "2024-01-31T12:30:00.123456Z",
        "amount": Decimal("12.345"),
        "big": 2**63 - 1,
        "raw": "00ff",
        "tags": ["a", "b"],
        "flag": True,
    }


def test_a_refusing_receiver_fails_the_put_with_its_status(tmp_path):
    refusing = Receiver(always=400, always_body=b'{"error": "field id is required"}')
    down = Receiver(always=503, always_body=b"maintenance")
    moved = Receiver(always=302)
    server = _start(
        tmp_path,
        _webhook_toml("hook", f"{refusing.url}/in", f'commit_url = "{refusing.url}/commit"')
        + _webhook_toml("busy", f"{down.url}/in", "retries = 2")
        + _webhook_toml("moved", f"{moved.url}/in"),
    )
    client = fl.connect(server.uri)
    try:
        with pytest.raises(pa.ArrowInvalid, match=r"400 Bad Request.*field id is required"):
            _put(client, {"target": "hook", "asset": "a"}, ROWS)
        assert [p for _, p, *_ in refusing.attempts] == ["/in"]  # no retry, no commit request
        with pytest.raises(fl.FlightUnavailableError, match=r"503 Service Unavailable: maintenance.*after 2 retries"):
            _put(client, {"target": "busy", "asset": "a"}, ROWS)
        assert len(down.attempts) == 3
        # A redirect is not followed (a 302 would turn the POST into a GET and drop the rows).
        with pytest.raises(pa.ArrowInvalid, match="refused the delivery with 302 Found"):
            _put(client, {"target": "moved", "asset": "a"}, ROWS)
        assert [m for m, *_ in moved.attempts] == ["POST"]
        # Neither put is in the catalog.
        assert [f.descriptor.path for f in client.list_flights()] == []
    finally:
        client.close()
        server.stop()
        refusing.stop()
        down.stop()
        moved.stop()


def test_a_put_interrupted_at_its_commit_request_is_rolled_back_and_delivered_again(tmp_path):
    receiver = Receiver(hold="/commit")
    toml = _webhook_toml("hook", f"{receiver.url}/in", f'batch_rows = 4\ncommit_url = "{receiver.url}/commit"')
    server = _start(tmp_path, toml)
    command = {"target": "hook", "asset": "orders", "idempotency_key": "run-1"}
    try:
        client = fl.connect(server.uri)
        put = threading.Thread(target=lambda: pytest.raises(Exception, _put, client, command, ROWS), daemon=True)
        put.start()
        assert receiver.held.wait(timeout=30), "the commit request never came"
        # The rows were delivered and the catalog holds the put as pending: the server dies now.
        first = receiver.data_requests()
        assert [int(h["x-quiver-rows"]) for h, _ in first] == [4, 4, 2]
        server.proc.kill()
        server.proc.wait(timeout=10)
        server.log.close()
        receiver.release.set()
        put.join(timeout=30)
        client.close()

        # At the restart the pending put is settled: nothing can tell whether the receiver
        # applied it, so the catalog rolls it back and says so.
        receiver.hold = None
        server = _start(tmp_path, toml)
        client = fl.connect(server.uri)
        assert [f.descriptor.path for f in client.list_flights()] == []
        assert "may have been delivered" in server.logs()
        # A retry with the same idempotency key delivers again (at least once) and commits.
        result = _put(client, command, ROWS)
        assert result["rows"] == 10 and not result.get("replayed")
        second_put = result["location"].rsplit("put=", 1)[1]
        assert second_put != first[0][0]["x-quiver-put"]
        again = [(h, b) for h, b in receiver.data_requests() if h["x-quiver-put"] == second_put]
        assert [row for _, body in again for row in json.loads(body)] == ROWS.to_pylist()
        commits = [json.loads(b) for _, p, h, b, st in receiver.attempts if p == "/commit" and st == 200]
        # The receiver did get the first commit request (the server died waiting for the
        # answer), so it saw the put twice: at least once, deduplicated by the receiver.
        assert [c["put"] for c in commits] == [first[0][0]["x-quiver-put"], second_put]
        client.close()
    finally:
        receiver.release.set()
        if server.proc.poll() is None:
            server.stop()
        receiver.stop()


def test_secrets_stay_out_of_describe_errors_and_logs(tmp_path, receiver):
    refusing = Receiver(always=403, always_body=b"no")
    toml = _webhook_toml(
        "hook", f"{refusing.url}/in?token=qt0ken", 'headers = { Authorization = "Bearer b3arer" }'
    ) + _webhook_toml("ok", f"http://user:pw0rd@127.0.0.1:{receiver.server.server_address[1]}/in?key=k3y")
    server = _start(tmp_path, toml)
    client = fl.connect(server.uri)
    try:
        with pytest.raises(pa.ArrowInvalid) as refused:
            _put(client, {"target": "hook", "asset": "a"}, ROWS)
        assert "403 Forbidden" in str(refused.value) and "token=***" in str(refused.value)
        _put(client, {"target": "ok", "asset": "a"}, ROWS)
        described = json.dumps(_action(client, "describe", {"target": "ok", "asset": "a"}))
        assert "user:***@" in described and "key=***" in described
        health = json.dumps(_action(client, "health", {}))
        everything = str(refused.value) + described + health + server.logs()
        for secret in ["qt0ken", "b3arer", "pw0rd", "k3y", SECRET]:
            assert secret not in everything
    finally:
        client.close()
        server.stop()
        refusing.stop()


def test_modes_options_and_health(hooks, receiver):
    with pytest.raises(pa.ArrowInvalid, match="does not support mode 'upsert'"):
        _put(hooks, {"target": "hook", "asset": "a", "mode": "upsert", "key": ["id"]}, ROWS)
    with pytest.raises(pa.ArrowInvalid, match="option 'compression' is not understood by webhook"):
        _put(hooks, {"target": "hook", "asset": "a", "options": {"compression": "zstd"}}, ROWS)
    with pytest.raises(pa.ArrowInvalid, match="'score' holds NaN"):
        _put(hooks, {"target": "hook", "asset": "a"}, pa.table({"score": [1.0, float("nan")]}))
    with pytest.raises(fl.FlightUnavailableError, match="could not be reached.*after 1 retries"):
        _put(hooks, {"target": "hook_down", "asset": "a"}, ROWS)
    health = _action(hooks, "health", {})
    assert health["status"] == "degraded"
    targets = health["targets"]
    assert all(targets[name]["ok"] for name in ["hook", "hook_arrow", "hook_parquet", "hook_ndjson"])
    assert not targets["hook_down"]["ok"] and "127.0.0.1:9" in targets["hook_down"]["error"]


# --- GraphQL ---------------------------------------------------------------------------------


@strawberry.input
class OrderInput:
    id: int
    name: Optional[str]
    score: float


@strawberry.type
class Added:
    count: int


def _graphql_app(received):
    @strawberry.type
    class Query:
        @strawberry.field
        def ping(self) -> str:
            return "pong"

    @strawberry.type
    class Mutation:
        @strawberry.mutation
        def add_orders(self, rows: list[OrderInput]) -> Added:
            received.extend({"id": r.id, "name": r.name, "score": r.score} for r in rows)
            return Added(count=len(rows))

        @strawberry.mutation
        def add_limited(self, rows: list[OrderInput]) -> Added:
            if any(r.score > 1 for r in rows):
                raise ValueError("a score over 1 is over the limit")
            return Added(count=len(rows))

    return GraphQL(strawberry.Schema(query=Query, mutation=Mutation))


class GraphqlServer:
    """strawberry's ASGI app under uvicorn in a thread; the first `fail_first` POSTs get 503."""

    def __init__(self, fail_first=0):
        self.received = []
        self.statuses = []
        inner = _graphql_app(self.received)
        left = [fail_first]

        async def app(scope, receive, send):
            if scope["type"] == "http" and scope["method"] == "POST" and left[0] > 0:
                left[0] -= 1
                self.statuses.append(503)
                await send({"type": "http.response.start", "status": 503, "headers": [(b"retry-after", b"1")]})
                await send({"type": "http.response.body", "body": b"warming up"})
                return
            if scope["type"] == "http" and scope["method"] == "POST":
                self.statuses.append(200)
            await inner(scope, receive, send)

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        _wait_for(lambda: self.server.started, "uvicorn")

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}/graphql"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _graphql_toml(name, endpoint, mutation, extra=""):
    return (
        f'[targets.{name}]\nkind = "graphql"\nendpoint = "{endpoint}"\nmutation = """{mutation}"""\n'
        f"backoff_ms = 50\nmax_backoff_secs = 2\n{extra}\n"
    )


@pytest.fixture
def graphql(tmp_path):
    gql = GraphqlServer(fail_first=1)
    server = _start(
        tmp_path,
        _graphql_toml("gql", gql.endpoint, "mutation($rows: [OrderInput!]!) { addOrders(rows: $rows) { count } }", "batch_rows = 4")
        + _graphql_toml("limited", gql.endpoint, "mutation($rows: [OrderInput!]!) { addLimited(rows: $rows) { count } }"),
    )
    client = fl.connect(server.uri)
    yield client, gql
    client.close()
    server.stop()
    gql.stop()


def test_graphql_rows_satisfy_the_input_type(graphql):
    client, gql = graphql
    result = _put(client, {"target": "gql", "asset": "shop/orders"}, ROWS)
    assert result["rows"] == 10
    assert gql.received == ROWS.to_pylist()
    # The first request was answered 503 and sent again; three requests of at most 4 rows.
    assert gql.statuses == [503, 200, 200, 200]
    described = _action(client, "describe", {"target": "gql", "asset": "shop/orders"})
    assert described["rows"] == 10
    with pytest.raises(pa.ArrowInvalid, match="write-only target"):
        client.do_get(fl.Ticket(json.dumps({"target": "gql", "asset": "shop/orders"}))).read_all()
    health = _action(client, "health", {})
    assert health["targets"]["gql"]["ok"], health


def test_graphql_errors_fail_the_put_with_message_and_path(graphql):
    client, gql = graphql
    # `id` is a string here: the input type wants an Int.
    wrong = pa.table({"id": ["a"], "name": ["x"], "score": [0.5]})
    with pytest.raises(pa.ArrowInvalid, match=r"GraphQL server refused rows 1 to 1 of asset 'bad'.*\$rows.*Int"):
        _put(client, {"target": "gql", "asset": "bad"}, wrong)
    # A column the input type lacks.
    extra = pa.table({"id": [1], "name": ["x"], "score": [0.5], "color": ["red"]})
    with pytest.raises(pa.ArrowInvalid, match="color"):
        _put(client, {"target": "gql", "asset": "bad"}, extra)
    # An error the resolver raises names its path.
    with pytest.raises(pa.ArrowInvalid, match=r"over the limit \(path: addLimited\)"):
        _put(client, {"target": "limited", "asset": "bad"}, ROWS)
    assert gql.received == []
    assert [f.descriptor.path for f in client.list_flights()] == []


# --- Email -----------------------------------------------------------------------------------


class SmtpServer:
    """aiosmtpd with its Maildir handler, in its own process."""

    def __init__(self, tmp_path):
        self.maildir = tmp_path / "maildir"
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{self.port}",
             "-c", "aiosmtpd.handlers.Mailbox", str(self.maildir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(self._listening, "aiosmtpd")

    def _listening(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"aiosmtpd exited with {self.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    @property
    def url(self):
        return f"smtp://127.0.0.1:{self.port}"

    def messages(self):
        if not self.maildir.exists():
            return []
        box = mailbox.Maildir(str(self.maildir), factory=None, create=False)
        return [email.message_from_bytes(box.get_bytes(key), policy=email.policy.default) for key in box.keys()]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


class _Tables(HTMLParser):
    """The cells of every <table>, row by row."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _email_toml(name, smtp, extra=""):
    return (
        f'[targets.{name}]\nkind = "email"\nsmtp = "{smtp}"\nfrom = "Quiver <quiver@example.com>"\n'
        f'to = ["finance@example.com"]\n{extra}\n'
    )


@pytest.fixture
def mail(tmp_path):
    smtp = SmtpServer(tmp_path)
    server = _start(
        tmp_path,
        _email_toml("report", smtp.url,
                    'cc = ["audit@example.com"]\nattach = "parquet"\npreview_rows = 3\n'
                    'subject = "Report {asset} {partition}: {rows} rows on {date}"')
        + _email_toml("report_csv", smtp.url)
        + _email_toml("summary", smtp.url, 'attach = "none"')
        + _email_toml("small", smtp.url, "max_bytes = 1024")
        + _email_toml("nowhere", "smtp://127.0.0.1:9"),
    )
    client = fl.connect(server.uri)
    yield client, smtp
    client.close()
    server.stop()
    smtp.stop()


def _parts(message):
    html = message.get_body(preferencelist=("html",)).get_content()
    text = message.get_body(preferencelist=("plain",)).get_content()
    attachments = list(message.iter_attachments())
    return html, text, attachments


def test_one_message_per_put_with_summary_table_and_attachment(mail):
    client, smtp = mail
    result = _put(client, {"target": "report", "asset": "sales/daily", "partition": "2024-01-31"}, ROWS)
    assert result["rows"] == 10
    (message,) = smtp.messages()
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert message["Subject"] == f"Report sales/daily 2024-01-31: 10 rows on {today}"
    assert message["From"] == "Quiver <quiver@example.com>"
    assert message["To"] == "finance@example.com" and message["Cc"] == "audit@example.com"
    html, text, attachments = _parts(message)
    parser = _Tables()
    parser.feed(html)
    summary, columns, rows = parser.tables
    assert ["Rows", "10"] in summary and ["Partition", "2024-01-31"] in summary
    assert columns[1:] == [["id", "Int64", "yes"], ["name", "Utf8", "yes"], ["score", "Float64", "yes"]]
    assert rows == [["id", "name", "score"], ["0", "", "0.0"], ["1", "n1", "0.25"], ["2", "n2", "0.5"]]
    assert "Rows: 10" in text and "id\tname\tscore\n0\t\t0.0\n" in text
    (attachment,) = attachments
    assert attachment.get_filename() == "sales_daily_2024-01-31.parquet"
    assert pq.read_table(io.BytesIO(attachment.get_content())).equals(ROWS)

    # The catalog records the Message-ID; DoGet refuses.
    described = _action(client, "describe", {"target": "report", "asset": "sales/daily"})
    assert described["rows"] == 10
    assert message["Message-ID"].strip("<>") in json.dumps(described)
    with pytest.raises(pa.ArrowInvalid, match="write-only target"):
        client.do_get(fl.Ticket(json.dumps({"target": "report", "asset": "sales/daily"}))).read_all()


def test_csv_attachment_no_attachment_and_recipients_per_put(mail):
    client, smtp = mail
    _put(client, {"target": "report_csv", "asset": "orders", "options": {"to": "ceo@example.com, cfo@example.com"}}, ROWS)
    _put(client, {"target": "summary", "asset": "orders", "mode": "append"}, ROWS)
    by_subject = {m["To"]: m for m in smtp.messages()}
    csv_message = by_subject["ceo@example.com, cfo@example.com"]
    (attachment,) = list(csv_message.iter_attachments())
    assert attachment.get_filename() == "orders.csv"
    got = pacsv.read_csv(
        io.BytesIO(attachment.get_payload(decode=True)),
        convert_options=pacsv.ConvertOptions(column_types=ROWS.schema, strings_can_be_null=True),
    )
    assert got.to_pylist() == ROWS.to_pylist()
    summary = by_subject["finance@example.com"]
    assert list(summary.iter_attachments()) == []
    assert "First 10 of 10 rows" in _parts(summary)[0]


def test_refusals_send_nothing(mail):
    client, smtp = mail
    big = pa.table({"id": pa.array(range(2000), pa.int64())})
    with pytest.raises(pa.ArrowInvalid, match=r"csv attachment of asset 'big' reached \d+ bytes.*over max_bytes \(1024\)"):
        _put(client, {"target": "small", "asset": "big"}, big)
    with pytest.raises(pa.ArrowInvalid, match="option 'to'.*not an email address"):
        _put(client, {"target": "report", "asset": "a", "options": {"to": "nobody"}}, ROWS)
    with pytest.raises(pa.ArrowInvalid, match="does not support mode 'upsert'"):
        _put(client, {"target": "report", "asset": "a", "mode": "upsert", "key": ["id"]}, ROWS)
    with pytest.raises(fl.FlightUnavailableError, match="sending asset 'a'"):
        _put(client, {"target": "nowhere", "asset": "a"}, ROWS)
    assert smtp.messages() == []
    assert [f.descriptor.path for f in client.list_flights()] == []
    health = _action(client, "health", {})
    assert health["targets"]["report"]["ok"], health
    assert not health["targets"]["nowhere"]["ok"]


BROKEN_CLIENT = """
import json, os, sys, time, urllib.request
import pyarrow as pa, pyarrow.flight as fl
uri, target, metrics = sys.argv[1:]
client = fl.connect(uri)
table = pa.table({"id": pa.array(range(10), pa.int64())})
writer, _ = client.do_put(fl.FlightDescriptor.for_command(json.dumps({"target": target, "asset": "cut"})), table.schema)
writer.write_table(table)
# Once the server is inside the put, the stream breaks: no end of stream, no goodbye.
running = 'quiver_puts_in_flight{target="%s"} 1' % target
deadline = time.monotonic() + 30
while running not in urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics").read().decode():
    if time.monotonic() > deadline:
        os._exit(2)
    time.sleep(0.02)
os._exit(1)
"""


def _metric_lines(port, name):
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return [line for line in text.splitlines() if line.startswith(name)]


def test_a_broken_stream_sends_no_email_and_no_commit_request(tmp_path, receiver):
    smtp = SmtpServer(tmp_path)
    metrics = _free_port()
    server = _start(
        tmp_path,
        f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
        + _email_toml("report", smtp.url)
        + _webhook_toml("hook", f"{receiver.url}/in", f'batch_rows = 4\ncommit_url = "{receiver.url}/commit"'),
    )
    client = fl.connect(server.uri)
    try:
        for target in ["report", "hook"]:
            broken = subprocess.run([sys.executable, "-c", BROKEN_CLIENT, server.uri, target, str(metrics)], timeout=60)
            assert broken.returncode == 1, "the put never started on the server"
            # The server notices the broken stream, aborts the put and leaves it.
            _wait_for(
                lambda: f'quiver_puts_in_flight{{target="{target}"}} 0' in _metric_lines(metrics, "quiver_puts_in_flight"),
                f"the end of the broken put to {target}",
            )
        assert smtp.messages() == []
        # Requests sent before the break stay sent; no commit request follows them.
        assert [p for _, p, *_ in receiver.attempts if p == "/commit"] == []
        assert [f.descriptor.path for f in client.list_flights()] == []
        # The same puts, whole, go through.
        _put(client, {"target": "report", "asset": "cut"}, ROWS)
        _put(client, {"target": "hook", "asset": "cut"}, ROWS)
        assert len(smtp.messages()) == 1
        assert [p for _, p, *_ in receiver.attempts if p == "/commit"] == ["/commit"]
    finally:
        client.close()
        server.stop()
        smtp.stop()
