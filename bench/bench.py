"""Quiver against the native ingestion paths, measured side by side in one run.

Both sides get the same in-memory pyarrow table. Quiver is driven by a pyarrow Flight client,
so client costs are the same as for a pyarrow user. Every scenario is repeated; the report
gives the median and the spread (min-max).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq


def lineitem(data_dir: Path, sf: float) -> pa.Table:
    out = data_dir / f"sf{sf}"
    path = out / "lineitem.parquet"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["tpchgen-cli", "parquet", "-s", str(sf), "--tables=lineitem", f"--output-dir={out}"],
            check=True,
        )
    table = pq.read_table(path)
    # tpchgen writes string_view columns; pipelines mostly hold plain strings.
    schema = pa.schema(
        [pa.field(f.name, pa.string() if f.type == pa.string_view() else f.type, f.nullable) for f in table.schema]
    )
    return table.cast(schema).combine_chunks()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


class Server:
    def __init__(self, binary: str, data_dir: str, env: dict | None = None, config: str | None = None):
        self.port = free_port()
        env = dict(env or {})
        if config is not None:
            os.makedirs(data_dir, exist_ok=True)
            path = os.path.join(data_dir, "quiver.toml")
            Path(path).write_text(config)
            env["QUIVER_CONFIG"] = path
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", data_dir,
             "--log", os.environ.get("QUIVER_BENCH_LOG", "warn")],
            stdout=subprocess.DEVNULL,
            # QUIVER_BENCH_LOG=info and QUIVER_BENCH_LOG_FILE keep the server's log.
            stderr=open(os.environ["QUIVER_BENCH_LOG_FILE"], "a") if os.environ.get("QUIVER_BENCH_LOG_FILE") else subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        wait_for_port(self.port, "quiver")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def quiver_put(client: fl.FlightClient, table: pa.Table, command: dict) -> float:
    started = time.perf_counter()
    writer, reader = client.do_put(fl.FlightDescriptor.for_command(json.dumps(command)), table.schema)
    writer.write_table(table, max_chunksize=122_880)
    writer.done_writing()
    reader.read()
    writer.close()
    return time.perf_counter() - started


def quiver_get(client: fl.FlightClient, command: dict) -> float:
    started = time.perf_counter()
    info = client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps(command)))
    client.do_get(info.endpoints[0].ticket).read_all()
    return time.perf_counter() - started


def postgres_database(admin_url: str) -> str:
    """A fresh database for the run, so both sides start from the same empty state."""
    import adbc_driver_postgresql.dbapi as pg

    name = f"quiver_bench_{os.getpid()}"
    with pg.connect(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def drop_postgres_database(admin_url: str, url: str) -> None:
    import adbc_driver_postgresql.dbapi as pg

    name = url.rpartition("/")[2]
    with pg.connect(admin_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are the 14th and 15th fields; the text after ")" starts at the 3rd.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_cpu(fn, server_pid: int | None = None) -> tuple:
    """Runs fn(); returns (wall seconds, this process's CPU seconds, the server's CPU seconds)."""
    server_before = process_cpu_seconds(server_pid) if server_pid else 0.0
    cpu_before, started = time.process_time(), time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    server = process_cpu_seconds(server_pid) - server_before if server_pid else 0.0
    return wall, cpu, server


def summary(times: list, rows: int, megabytes: float) -> dict:
    median = statistics.median(times)
    return {
        "seconds_median": round(median, 4),
        "seconds_min": round(min(times), 4),
        "seconds_max": round(max(times), 4),
        "rows_per_s": round(rows / median),
        "mb_per_s": round(megabytes / median, 1),
    }


def postgres_scenarios(client, table: pa.Table, url: str, reps: int, rows: int, megabytes: float) -> list:
    """DoPut/DoGet against PostgreSQL vs ADBC's COPY-based ingest and fetch, same server."""
    import adbc_driver_postgresql.dbapi as pg

    out = []
    quiver_times = [
        quiver_put(client, table, {"target": "postgres", "asset": "tpch/lineitem"}) for _ in range(reps)
    ]
    native_times = []
    with pg.connect(url) as conn:
        for _ in range(reps):
            def ingest():
                with conn.cursor() as cur:
                    cur.adbc_ingest("lineitem_adbc", table, mode="replace", db_schema_name="public")
                conn.commit()

            native_times.append(timed(ingest))
        out.append(
            {
                "scenario": "DoPut → postgres (overwrite)",
                "native": "adbc_driver_postgresql adbc_ingest(mode='replace') (COPY binary)",
                "quiver": summary(quiver_times, rows, megabytes),
                "baseline": summary(native_times, rows, megabytes),
            }
        )
        quiver_times = [quiver_get(client, {"target": "postgres", "asset": "tpch/lineitem"}) for _ in range(reps)]
        native_times = []
        for _ in range(reps):
            def fetch():
                with conn.cursor() as cur:
                    cur.execute("SELECT * FROM public.lineitem_adbc")
                    cur.fetch_arrow_table()

            native_times.append(timed(fetch))
        out.append(
            {
                "scenario": "DoGet ← postgres",
                "native": "adbc_driver_postgresql fetch_arrow_table (COPY binary)",
                "quiver": summary(quiver_times, rows, megabytes),
                "baseline": summary(native_times, rows, megabytes),
            }
        )
    return out


class SearchServer:
    """noida-db (the Elasticsearch 8 API) on a free port, unless a URL is given."""

    def __init__(self, url: str | None, work: str):
        self.proc = None
        if url:
            self.url = url
            return
        port = free_port()
        bindir = os.path.dirname(sys.executable)
        self.proc = subprocess.Popen(
            [os.path.join(bindir, "noida-db"), "start", "--data-dir", os.path.join(work, "es"),
             "--only", "elasticsearch", "--host", "127.0.0.1", "--elasticsearch-port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("noida-db did not start")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


BULK_BYTES = 10 * 1024 * 1024
BULK_THREADS = 4


def elasticsearch_scenario(client, table: pa.Table, url: str, reps: int, rows: int, megabytes: float) -> dict:
    """DoPut overwrite vs elasticsearch.helpers.parallel_bulk from the same Arrow table, with
    the same bulk body size and requests in flight, into the same server."""
    from elasticsearch import Elasticsearch
    from elasticsearch.helpers import parallel_bulk

    quiver_times = [
        quiver_put(client, table, {"target": "elasticsearch", "asset": "tpch/lineitem"}) for _ in range(reps)
    ]
    es = Elasticsearch(url, request_timeout=300)

    def ingest():
        es.options(ignore_status=404).indices.delete(index="lineitem_native")
        es.indices.create(index="lineitem_native")
        actions = ({"_index": "lineitem_native", "_source": doc} for doc in table.to_pylist())
        for ok, item in parallel_bulk(
            es, actions, thread_count=BULK_THREADS, chunk_size=1_000_000, max_chunk_bytes=BULK_BYTES
        ):
            if not ok:
                raise RuntimeError(item)
        es.indices.refresh(index="lineitem_native")

    native_times = [timed(ingest) for _ in range(reps)]
    count = es.count(index="lineitem_native")["count"]
    if count != rows:
        raise RuntimeError(f"parallel_bulk indexed {count} of {rows} documents")
    es.close()
    return {
        "scenario": "DoPut → elasticsearch (overwrite)",
        "native": f"elasticsearch.helpers.parallel_bulk ({BULK_THREADS} threads, 10 MiB bodies) from table.to_pylist()",
        "quiver": summary(quiver_times, rows, megabytes),
        "baseline": summary(native_times, rows, megabytes),
    }


# Every scenario that needs nothing but this machine; elasticsearch runs when asked for.
DEFAULT_SCENARIOS = ["duckdb", "parquet", "files", "postgres", "get", "events", "redis", "hyper", "transport", "memory"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--sf", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("QUIVER_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
        help="a server where the user may create databases; empty to skip PostgreSQL",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated: duckdb, parquet, files (arrow, csv, json), postgres, elasticsearch, redis, hyper, "
        f"transport, get, events, memory (default: {', '.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument(
        "--elasticsearch-url",
        default=os.environ.get("QUIVER_BENCH_ELASTICSEARCH_URL"),
        help="a cluster for the elasticsearch scenario; default: noida-db on a free port",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("QUIVER_BENCH_REDIS_URL"),
        help="a Redis for the redis scenario (emptied before each run); default: redis-server on a free port",
    )
    args = parser.parse_args()
    scenarios = set(args.scenarios.split(","))

    table = lineitem(Path(args.data), args.sf)
    rows, megabytes = table.num_rows, table.nbytes / 1e6
    results = []
    pg_url = postgres_database(args.postgres_url) if args.postgres_url and "postgres" in scenarios else None
    with tempfile.TemporaryDirectory() as work:
        env = {"QUIVER_POSTGRES_URL": pg_url} if pg_url else {}
        search = SearchServer(args.elasticsearch_url, work) if "elasticsearch" in scenarios else None
        if search:
            env["QUIVER_ELASTICSEARCH_URL"] = search.url
        server = Server(args.binary, os.path.join(work, "quiver"), env)
        client = fl.connect(f"grpc://127.0.0.1:{server.port}")

        if "duckdb" in scenarios:
            results.append(duckdb_scenario(client, server.proc.pid, table, work, args.reps, rows, megabytes))
        if "parquet" in scenarios:
            results.append(parquet_scenario(client, table, work, args.reps, rows, megabytes))
        if "files" in scenarios:
            results.extend(file_format_scenarios(client, table, work, args.reps, rows, megabytes))
        if pg_url:
            results.extend(postgres_scenarios(client, table, pg_url, args.reps, rows, megabytes))
        if search:
            results.append(elasticsearch_scenario(client, table, search.url, args.reps, rows, megabytes))
        if "get" in scenarios:
            results.append(doget_parquet_scenario(client, table, work, args.reps, rows, megabytes))
        if "events" in scenarios:
            # Built row by row in Python: a million rows keeps the generation short.
            results.append(events_scenario(client, min(rows, 1_000_000), work, args.reps))
        peak = server.peak_rss_mb()
        client.close()
        server.stop()
        if search:
            search.stop()
        if "redis" in scenarios:
            results.append(redis_scenario(args.binary, table, work, args.reps, args.redis_url))
        if "hyper" in scenarios:
            results.append(hyper_scenario(args.binary, table, work, args.reps))
        if "transport" in scenarios:
            results.extend(transport_scenarios(args.binary, table, work, args.reps, rows, megabytes))
        memory = memory_scenario(args.binary, table, work, megabytes) if "memory" in scenarios else None
    if pg_url:
        drop_postgres_database(args.postgres_url, pg_url)
    write_report(args, results, rows, megabytes, peak, memory)


def duckdb_scenario(
    client, server_pid: int, table: pa.Table, work: str, reps: int, rows: int, megabytes: float
) -> dict:
    """DoPut overwrite vs python duckdb CREATE TABLE AS SELECT from the Arrow table, with the
    CPU time each side spends: on one machine the Flight client's work shares the cores with
    the server's."""
    command = {"target": "duckdb", "asset": "tpch/lineitem"}
    quiver = [with_cpu(lambda: quiver_put(client, table, command), server_pid) for _ in range(reps)]
    native = duckdb.connect(os.path.join(work, "native.duckdb"))
    native.register("arrow_table", table)
    baseline = [
        with_cpu(lambda: native.execute("CREATE OR REPLACE TABLE lineitem AS SELECT * FROM arrow_table"))
        for _ in range(reps)
    ]
    native.close()
    return {
        "scenario": "DoPut → duckdb (overwrite)",
        "native": "python duckdb CREATE TABLE AS SELECT * FROM arrow_table",
        "quiver": summary([q[0] for q in quiver], rows, megabytes),
        "baseline": summary([b[0] for b in baseline], rows, megabytes),
        "cpu_seconds_median": {
            "quiver_server": round(statistics.median(q[2] for q in quiver), 2),
            "flight_client": round(statistics.median(q[1] for q in quiver), 2),
            "native": round(statistics.median(b[1] for b in baseline), 2),
        },
    }


def parquet_scenario(client, table: pa.Table, work: str, reps: int, rows: int, megabytes: float) -> dict:
    """DoPut vs pyarrow.parquet.write_table with the same codec, level, row group size and
    dictionary encoding."""
    quiver_times = [quiver_put(client, table, {"target": "parquet", "asset": "tpch/lineitem"}) for _ in range(reps)]
    out = os.path.join(work, "native.parquet")
    native_times = [
        timed(
            lambda: pq.write_table(
                table, out, compression="zstd", compression_level=1, row_group_size=1024 * 1024, use_dictionary=True
            )
        )
        for _ in range(reps)
    ]
    return {
        "scenario": "DoPut → parquet (zstd)",
        "native": "pyarrow.parquet.write_table(compression='zstd', level 1, 1Mi-row groups)",
        "quiver": summary(quiver_times, rows, megabytes),
        "baseline": summary(native_times, rows, megabytes),
    }


def file_format_scenarios(client, table: pa.Table, work: str, reps: int, rows: int, megabytes: float) -> list:
    """DoPut to the arrow, csv and json targets vs the usual Python writer of each format."""
    import pyarrow.csv as pcsv
    import pyarrow.feather as feather
    import polars as pl

    out = os.path.join(work, "native")
    natives = {
        "arrow": (
            "pyarrow.feather.write_feather(compression='uncompressed')",
            lambda: feather.write_feather(table, out, compression="uncompressed"),
        ),
        "csv": ("pyarrow.csv.write_csv", lambda: pcsv.write_csv(table, out)),
        "json": ("polars.from_arrow(table).write_ndjson", lambda: pl.from_arrow(table).write_ndjson(out)),
    }
    results = []
    for target, (native, write) in natives.items():
        quiver_times = [quiver_put(client, table, {"target": target, "asset": "tpch/lineitem"}) for _ in range(reps)]
        native_times = [timed(write) for _ in range(reps)]
        results.append(
            {
                "scenario": f"DoPut → {target}",
                "native": native,
                "quiver": summary(quiver_times, rows, megabytes),
                "baseline": summary(native_times, rows, megabytes),
            }
        )
    return results


class PyarrowServer:
    """bench/pyarrow_server.py in its own process."""

    def __init__(self):
        self.port = free_port()
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyarrow_server.py")
        self.proc = subprocess.Popen([sys.executable, script, str(self.port)])
        wait_for_port(self.port, "the pyarrow Flight server")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def concurrent_puts(port: int, table: pa.Table, streams: int, command: dict) -> float:
    """Wall time for `streams` clients, one connection each, putting `table` at once."""
    import threading

    clients = [fl.connect(f"grpc://127.0.0.1:{port}") for _ in range(streams)]
    start = threading.Barrier(streams + 1)

    def run(i: int) -> None:
        start.wait()
        quiver_put(clients[i], table, {**command, "asset": f"{command['asset']}-{i}"})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for c in clients:
        c.close()
    return elapsed


def transport_scenarios(binary: str, table: pa.Table, work: str, reps: int, rows: int, megabytes: float) -> list:
    """DoPut into Quiver's discard target vs a pyarrow Flight server that reads and drops the
    stream: the cost of moving the data, with no storage. One stream, then four at once."""
    quiver = Server(binary, os.path.join(work, "sink"), config='[targets.sink]\nkind = "discard"\n')
    baseline = PyarrowServer()
    results = []
    try:
        for streams in (1, 4):
            command = {"target": "sink", "asset": "transport/lineitem"}
            quiver_times = [concurrent_puts(quiver.port, table, streams, command) for _ in range(reps)]
            native_times = [concurrent_puts(baseline.port, table, streams, command) for _ in range(reps)]
            total_rows, total_mb = rows * streams, megabytes * streams
            results.append(
                {
                    "scenario": f"DoPut → discard, {streams} stream{'s' if streams > 1 else ''} (transport ceiling)",
                    "native": f"pyarrow FlightServerBase do_put reading and dropping every batch, {streams} stream(s)",
                    "quiver": summary(quiver_times, total_rows, total_mb),
                    "baseline": summary(native_times, total_rows, total_mb),
                }
            )
    finally:
        quiver.stop()
        baseline.stop()
    return results


class RedisServer:
    """redis-server on a free port with persistence off, or the Redis `url` names."""

    def __init__(self, url: str | None, work: str):
        self.proc = None
        if url:
            self.url = url
            return
        port = free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", work],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, "redis-server")

    def stop(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait(timeout=30)


def redis_scenario(binary: str, table: pa.Table, work: str, reps: int, url: str | None) -> dict:
    """DoPut of 1M lineitem rows to a hash-layout redis target (one hash per row, keyed by
    l_orderkey and l_linenumber) vs redis-py writing the same rows as HSETs, in pipelines of
    10,000 commands, into the same Redis; the database is emptied before every run."""
    import redis

    rows = min(table.num_rows, 1_000_000)
    part = table.slice(0, rows).combine_chunks()
    megabytes = part.nbytes / 1e6
    server = RedisServer(url, work)
    config = f'[targets.redis]\nkind = "redis"\nurl = "{server.url}"\nlayout = "hash"\n'
    quiver = Server(binary, os.path.join(work, "redis-quiver"), config=config)
    client = fl.connect(f"grpc://127.0.0.1:{quiver.port}")
    r = redis.Redis.from_url(server.url)
    command = {"target": "redis", "asset": "tpch/lineitem", "key": ["l_orderkey", "l_linenumber"]}

    def native() -> None:
        names = part.column_names
        pipe = r.pipeline(transaction=False)
        for batch in part.to_batches(max_chunksize=10_000):
            columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for row in zip(*columns):
                fields = {n: str(v) for n, v in zip(names, row) if v is not None}
                pipe.hset(f"lineitem:{fields['l_orderkey']}:{fields['l_linenumber']}", mapping=fields)
            pipe.execute()

    quiver_times, native_times = [], []
    try:
        for _ in range(reps):
            r.flushdb()
            quiver_times.append(quiver_put(client, part, command))
            r.flushdb()
            native_times.append(timed(native))
    finally:
        r.close()
        client.close()
        quiver.stop()
        server.stop()
    return {
        "scenario": f"DoPut → redis (hash layout, {rows:,} rows)",
        "native": "redis-py pipelined HSET (10,000 commands per round trip), values as str()",
        "quiver": summary(quiver_times, rows, megabytes),
        "baseline": summary(native_times, rows, megabytes),
    }


def hyper_scenario(binary: str, table: pa.Table, work: str, reps: int) -> dict:
    """DoPut of 1M lineitem rows to a hyper target vs tableauhyperapi's Inserter writing the
    same rows (as Python values, the Inserter's input) into a new .hyper file."""
    import tableauhyperapi as th

    rows = min(table.num_rows, 1_000_000)
    part = table.slice(0, rows).combine_chunks()
    megabytes = part.nbytes / 1e6
    hyperd = Path(th.__file__).parent / "bin" / "hyper" / "hyperd"
    root = os.path.join(work, "hyper-quiver", "extracts")
    config = f'[targets.hyper]\nkind = "hyper"\nroot = "{root}"\nhyperd = "{hyperd}"\n'
    quiver = Server(binary, os.path.join(work, "hyper-quiver"), config=config)
    client = fl.connect(f"grpc://127.0.0.1:{quiver.port}")

    def sql_type(t: pa.DataType):
        if pa.types.is_int64(t):
            return th.SqlType.big_int()
        if pa.types.is_int32(t):
            return th.SqlType.int()
        if pa.types.is_decimal(t):
            return th.SqlType.numeric(t.precision, t.scale)
        if pa.types.is_date(t):
            return th.SqlType.date()
        if pa.types.is_floating(t):
            return th.SqlType.double()
        return th.SqlType.text()

    definition = th.TableDefinition(
        th.TableName("Extract", "Extract"),
        [th.TableDefinition.Column(f.name, sql_type(f.type)) for f in part.schema],
    )
    native_path = os.path.join(work, "hyper-native.hyper")

    def native() -> None:
        with th.Connection(process.endpoint, native_path, th.CreateMode.CREATE_AND_REPLACE) as conn:
            conn.catalog.create_schema("Extract")
            conn.catalog.create_table(definition)
            with th.Inserter(conn, definition) as inserter:
                for batch in part.to_batches(max_chunksize=122_880):
                    columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
                    inserter.add_rows(zip(*columns))
                inserter.execute()

    quiver_times, native_times = [], []
    try:
        with th.HyperProcess(th.Telemetry.DO_NOT_SEND_USAGE_DATA_TO_TABLEAU, parameters={"log_dir": work}) as process:
            for _ in range(reps):
                quiver_times.append(quiver_put(client, part, {"target": "hyper", "asset": "tpch/lineitem"}))
                native_times.append(timed(native))
    finally:
        client.close()
        quiver.stop()
    return {
        "scenario": f"DoPut → hyper ({rows:,} rows)",
        "native": "tableauhyperapi Inserter.add_rows of the rows as Python values (to_pylist), into a new .hyper file",
        "quiver": summary(quiver_times, rows, megabytes),
        "baseline": summary(native_times, rows, megabytes),
    }


def doget_parquet_scenario(client, table: pa.Table, work: str, reps: int, rows: int, megabytes: float) -> dict:
    """DoGet of a Parquet asset vs a pyarrow Flight server serving the very same file."""
    quiver_put(client, table, {"target": "parquet", "asset": "tpch/lineitem-get"})
    path = os.path.join(work, "quiver", "parquet", "tpch", "lineitem-get.parquet")
    quiver_times = [quiver_get(client, {"target": "parquet", "asset": "tpch/lineitem-get"}) for _ in range(reps)]
    baseline = PyarrowServer()
    try:
        other = fl.connect(f"grpc://127.0.0.1:{baseline.port}")
        native_times = [timed(lambda: other.do_get(fl.Ticket(path.encode())).read_all()) for _ in range(reps)]
        other.close()
    finally:
        baseline.stop()
    return {
        "scenario": "DoGet ← parquet",
        "native": "pyarrow FlightServerBase serving the same file with RecordBatchStream(pq.read_table(path))",
        "quiver": summary(quiver_times, rows, megabytes),
        "baseline": summary(native_times, rows, megabytes),
    }


def events(rows: int) -> pa.Table:
    """A nested event log: struct, list, timestamp with time zone and dictionary strings."""
    import random

    rng = random.Random(7)
    kinds = ["click", "view", "purchase", "signup", "logout"]
    countries = ["de", "fr", "us", "jp", "br", "in", "ng", "au"]
    tags = ["mobile", "web", "beta", "ab-test", "returning", "paid", "organic"]
    base = 1_700_000_000_000_000
    return pa.table(
        {
            "event_id": pa.array(range(rows), pa.int64()),
            "at": pa.array([base + i * 1_000 + rng.randrange(1_000) for i in range(rows)], pa.timestamp("us", tz="UTC")),
            "kind": pa.array([kinds[rng.randrange(len(kinds))] for _ in range(rows)]).dictionary_encode(),
            "user": pa.array(
                [{"id": rng.randrange(1_000_000), "country": countries[rng.randrange(len(countries))]} for _ in range(rows)],
                pa.struct([("id", pa.int64()), ("country", pa.string())]),
            ),
            "tags": pa.array([rng.sample(tags, rng.randrange(4)) for _ in range(rows)], pa.list_(pa.string())),
            "value": pa.array([rng.random() * 100 if rng.random() < 0.9 else None for _ in range(rows)], pa.float64()),
        }
    )


def events_scenario(client, rows_wanted: int, work: str, reps: int) -> dict:
    """DoPut of the nested events table to parquet vs pyarrow.parquet.write_table."""
    table = events(rows_wanted)
    rows, megabytes = table.num_rows, table.nbytes / 1e6
    result = parquet_scenario(client, table, work, reps, rows, megabytes)
    result["scenario"] = f"DoPut → parquet (zstd), nested events ({rows:,} rows, {megabytes:.0f} MB)"
    return result


def memory_scenario(binary: str, table: pa.Table, work: str, megabytes: float) -> dict:
    """Peak server RSS while putting 1×, 4× and 16× the table to parquet in one stream, each on
    a fresh server: streaming keeps it flat."""
    peaks = {}
    for times in (1, 4, 16):
        server = Server(binary, os.path.join(work, f"memory-{times}"))
        client = fl.connect(f"grpc://127.0.0.1:{server.port}")
        command = {"target": "parquet", "asset": "tpch/lineitem-repeated"}
        writer, reader = client.do_put(fl.FlightDescriptor.for_command(json.dumps(command)), table.schema)
        for _ in range(times):
            writer.write_table(table, max_chunksize=122_880)
        writer.done_writing()
        reader.read()
        writer.close()
        client.close()
        peaks[f"{times}x ({megabytes * times:.0f} MB)"] = round(server.peak_rss_mb(), 1)
        server.stop()
    return peaks


def write_report(args, results: list, rows: int, megabytes: float, peak: float, memory: dict | None) -> None:
    for r in results:
        r["ratio"] = round(r["baseline"]["seconds_median"] / r["quiver"]["seconds_median"], 2)
    report = {
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()}",
        "dataset": f"TPC-H lineitem SF {args.sf} ({rows} rows, {megabytes:.0f} MB in Arrow), tpchgen-cli",
        "repetitions": args.reps,
        "server_peak_rss_mb": round(peak, 1),
        "results": results,
    }
    if memory:
        report["put_peak_rss_mb"] = memory
    Path(args.out, "benchmarks.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        BEGIN,
        f"- Date: {report['date']}; machine: {report['machine']}",
        f"- Data: {report['dataset']}",
        f"- Repetitions: {args.reps}; times are medians, with min–max",
        f"- Quiver server peak RSS over the run: {report['server_peak_rss_mb']} MB",
        "",
        "| scenario | Quiver | native | ratio |",
        "|---|---|---|---|",
    ]
    for r in results:
        q, b = r["quiver"], r["baseline"]
        lines.append(
            f"| {r['scenario']} | {q['rows_per_s']:,} rows/s, {q['mb_per_s']} MB/s "
            f"({q['seconds_median']} s, {q['seconds_min']}–{q['seconds_max']}) | "
            f"{r['native']}: {b['rows_per_s']:,} rows/s ({b['seconds_median']} s, "
            f"{b['seconds_min']}–{b['seconds_max']}) | {r['ratio']} |"
        )
    cpu = [r for r in results if "cpu_seconds_median" in r]
    if cpu:
        lines += ["", "CPU seconds per run (medians; user + system, all threads):", ""]
        for r in cpu:
            c = r["cpu_seconds_median"]
            lines.append(
                f"- {r['scenario']}: Quiver server {c['quiver_server']} s + pyarrow Flight client "
                f"{c['flight_client']} s; native {c['native']} s"
            )
    if memory:
        lines += [
            "",
            "Server peak RSS while one DoPut streams the table repeated to parquet (fresh server each): "
            + ", ".join(f"{k}: {v} MB" for k, v in memory.items()),
        ]
    lines.append(END)
    generated = "\n".join(lines)
    page = Path(args.out, "benchmarks.md")
    text = page.read_text() if page.exists() else ""
    if BEGIN in text and END in text:
        # Only the generated block is replaced: the analysis around it stays.
        head, rest = text.split(BEGIN, 1)
        text = head + generated + rest.split(END, 1)[1]
    else:
        text = HEADER + generated + "\n" + (f"\n{text}" if text else "")
    page.write_text(text)
    print(generated)


BEGIN = "<!-- bench/run: results begin -->"
END = "<!-- bench/run: results end -->"
HEADER = """# Benchmarks

Generated by `bench/run` (scale with `QUIVER_BENCH_SF`, `QUIVER_BENCH_REPS`). Quiver and the
native path get the same in-memory pyarrow table in the same run; Quiver is driven by a
pyarrow Flight client over loopback, so its figures include the Flight transfer.
Ratio = native time / Quiver time (above 1.0: Quiver is faster).

"""


if __name__ == "__main__":
    main()
