"""Load test: many concurrent writers and readers across targets for a fixed time, with
client-side aborts and a PostgreSQL network cut in the middle, then a full verification.

- Writers overwrite their own assets (a few each, so overwrites race with readers) on every
  target in turn. Each put's table is generated from a seed, so any version can be rebuilt
  exactly for checking.
- Some puts are cancelled by the client mid-stream (a deadline far shorter than the upload)
  into assets of their own: none of those may ever exist.
- Readers read random assets and check the table is exactly one of the versions a writer put.
- PostgreSQL is reached through a TCP relay that is cut for a few seconds mid-run: puts to it
  must fail UNAVAILABLE (or DEADLINE_EXCEEDED while the cut holds), every other target keeps
  working, and PostgreSQL puts succeed again once the relay is back.
- Afterwards every asset holds exactly its last committed version, and the catalog lists
  nothing else.

Writes docs/load.json and docs/load.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import random
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as fl

from bench import Server, drop_postgres_database, postgres_database


def table_for(seed: int) -> pa.Table:
    """The table a put with this seed writes: 500 to 20,000 rows, rebuilt identically on demand."""
    rng = random.Random(seed)
    rows = rng.randint(500, 20_000)
    start = rng.randint(0, 1 << 40)
    ids = pa.array(range(start, start + rows), pa.int64())
    return pa.table(
        {
            "id": ids,
            "amount": pc.divide(pc.cast(ids, pa.float64()), 7.0),
            "label": pc.cast(pc.bit_wise_and(ids, 1023), pa.string()),
            "seed": pa.array([seed] * rows, pa.int64()),
        }
    )


class Relay:
    """A TCP relay to PostgreSQL that can be cut: open connections are closed and new ones
    refused until it is restored."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            inbound, _ = self.listener.accept()
            if self.cut.is_set():
                inbound.close()
                continue
            try:
                outbound = socket.create_connection(self.upstream)
            except OSError:
                inbound.close()
                continue
            with self.lock:
                self.sockets += [inbound, outbound]
            threading.Thread(target=self._pipe, args=(inbound, outbound), daemon=True).start()
            threading.Thread(target=self._pipe, args=(outbound, inbound), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def set_cut(self, cut: bool) -> None:
        if cut:
            self.cut.set()
            with self.lock:
                for s in self.sockets:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                self.sockets.clear()
        else:
            self.cut.clear()


class Run:
    def __init__(self, port: int, targets: list[str], deadline: float):
        self.port = port
        self.targets = targets
        self.deadline = deadline
        self.lock = threading.Lock()
        # (target, asset) -> seeds that may be committed (put started); last committed seed.
        self.candidates: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
        self.committed: dict[tuple[str, str], int] = {}
        self.aborted_assets: set[tuple[str, str]] = set()
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.outcomes: collections.Counter = collections.Counter()
        self.wrong_reads: list[str] = []
        # The first message of each (operation, target, outcome) that is not ok.
        self.messages: dict[tuple[str, str, str], str] = {}
        self.pg_during_cut: collections.Counter = collections.Counter()
        self.pg_after_cut: collections.Counter = collections.Counter()
        self.cut_window = (float("inf"), float("inf"))

    def client(self) -> fl.FlightClient:
        return fl.connect(f"grpc://127.0.0.1:{self.port}")

    def record(self, op: str, target: str, outcome: str, started: float, message: str = "") -> None:
        ended = time.monotonic()
        with self.lock:
            if message:
                self.messages.setdefault((op, target, outcome), message[:300])
            self.latency[f"{op} {target}"].append(ended - started)
            self.outcomes[(op, target, outcome)] += 1
            if target == "postgres" and op == "put":
                low, high = self.cut_window
                if low <= started <= high:
                    self.pg_during_cut[outcome] += 1
                elif started > high + 5:
                    self.pg_after_cut[outcome] += 1

    def writer(self, index: int) -> None:
        client = self.client()
        rng = random.Random(index)
        sequence = 0
        while time.monotonic() < self.deadline:
            sequence += 1
            target = self.targets[sequence % len(self.targets)]
            seed = index * 1_000_000 + sequence
            table = table_for(seed)
            if rng.random() < 0.05:
                self.abort(client, target, f"load/aborted/w{index}", table)
                continue
            asset = f"load/w{index}/a{rng.randrange(3)}"
            with self.lock:
                self.candidates[(target, asset)].add(seed)
            started = time.monotonic()
            outcome, message = put(client, target, asset, table, timeout=60)
            self.record("put", target, outcome, started, message)
            if outcome == "ok":
                with self.lock:
                    self.committed[(target, asset)] = seed
        client.close()

    def abort(self, client, target: str, asset: str, table: pa.Table) -> None:
        """Sends part of a put, then stalls past the call's deadline, so the client cancels
        the call mid-stream: the server must never commit it."""
        with self.lock:
            self.aborted_assets.add((target, asset))
        started = time.monotonic()
        command = {"target": target, "asset": asset}
        try:
            writer, reader = client.do_put(
                fl.FlightDescriptor.for_command(json.dumps(command)),
                table.schema,
                fl.FlightCallOptions(timeout=0.5),
            )
            writer.write_table(table.slice(0, table.num_rows // 2))
            time.sleep(1.0)
            writer.write_table(table.slice(table.num_rows // 2))
            writer.done_writing()
            reader.read()
            writer.close()
            outcome, message = "ok", ""
        except (fl.FlightError, pa.ArrowException) as e:
            outcome, message = code_of(e), str(e)
        self.record("aborted put", target, outcome, started, message)

    def reader(self, index: int) -> None:
        client = self.client()
        rng = random.Random(-index - 1)
        while time.monotonic() < self.deadline:
            with self.lock:
                keys = list(self.committed)
            if not keys:
                time.sleep(0.05)
                continue
            target, asset = rng.choice(keys)
            started = time.monotonic()
            try:
                ticket = fl.Ticket(json.dumps({"target": target, "asset": asset}).encode())
                table = client.do_get(ticket, fl.FlightCallOptions(timeout=60)).read_all()
                outcome = "ok"
            except fl.FlightError as e:
                table, outcome = None, code_of(e)
                message = str(e)
            else:
                message = ""
            self.record("get", target, outcome, started, message)
            if table is not None:
                seed = table.column("seed")[0].as_py() if table.num_rows else None
                with self.lock:
                    known = seed in self.candidates[(target, asset)]
                if not known or not table.equals(table_for(seed)):
                    with self.lock:
                        self.wrong_reads.append(f"{target}/{asset}: seed {seed}")
        client.close()


def put(client, target: str, asset: str, table: pa.Table, timeout: float) -> tuple[str, str]:
    command = {"target": target, "asset": asset}
    try:
        writer, reader = client.do_put(
            fl.FlightDescriptor.for_command(json.dumps(command)),
            table.schema,
            fl.FlightCallOptions(timeout=timeout),
        )
        writer.write_table(table, max_chunksize=65_536)
        writer.done_writing()
        reader.read()
        writer.close()
        return "ok", ""
    except fl.FlightError as e:
        return code_of(e), str(e)
    except pa.ArrowException as e:
        return code_of(e), str(e)


def code_of(error: Exception) -> str:
    # pyarrow raises some codes as other classes: ABORTED (a read raced an overwrite; retry
    # it) as FlightInternalError, RESOURCE_EXHAUSTED (a concurrency limit) as ArrowInvalid.
    for code in ("ABORTED", "RESOURCE_EXHAUSTED"):
        if f"{code}:" in str(error):
            return code
    return {
        fl.FlightUnavailableError: "UNAVAILABLE",
        fl.FlightTimedOutError: "DEADLINE_EXCEEDED",
        fl.FlightCancelledError: "CANCELLED",
        fl.FlightInternalError: "INTERNAL",
        fl.FlightUnauthenticatedError: "UNAUTHENTICATED",
        fl.FlightUnauthorizedError: "PERMISSION_DENIED",
        fl.FlightServerError: "SERVER_ERROR",
    }.get(type(error), type(error).__name__)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def verify(run: Run) -> dict:
    """Every committed asset holds its last committed put; nothing else is listed."""
    client = run.client()
    mismatched = []
    for (target, asset), seed in sorted(run.committed.items()):
        ticket = fl.Ticket(json.dumps({"target": target, "asset": asset}).encode())
        table = client.do_get(ticket).read_all()
        if not table.equals(table_for(seed)):
            mismatched.append(f"{target}/{asset}")
    listed = set()
    for target in run.targets:
        criteria = json.dumps({"target": target, "prefix": "load/"}).encode()
        for info in client.list_flights(criteria):
            listed.add((target, "/".join(p.decode() for p in info.descriptor.path[1:])))
    client.close()
    unexpected = sorted(f"{t}/{a}" for t, a in listed - set(run.committed))
    missing = sorted(f"{t}/{a}" for t, a in set(run.committed) - listed)
    aborted_visible = sorted(f"{t}/{a}" for t, a in listed & run.aborted_assets)
    return {
        "assets_checked": len(run.committed),
        "mismatched": mismatched,
        "unexpected_listed": unexpected,
        "missing_from_listing": missing,
        "aborted_visible": aborted_visible,
        "wrong_reads": run.wrong_reads,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--targets", default="parquet,arrow,csv,duckdb,postgres")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("QUIVER_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--cut-seconds", type=float, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    targets = args.targets.split(",")

    env, relay, pg_url = {}, None, None
    if "postgres" in targets:
        pg_url = postgres_database(args.postgres_url)
        host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        relay = Relay((host, int(port)))
        env["QUIVER_POSTGRES_URL"] = pg_url.replace(host_port, f"127.0.0.1:{relay.port}")
    with tempfile.TemporaryDirectory() as work:
        server = Server(args.binary, os.path.join(work, "quiver"), env)
        started = time.monotonic()
        run = Run(server.port, targets, started + args.duration)
        threads = [threading.Thread(target=run.writer, args=(i,)) for i in range(args.writers)]
        threads += [threading.Thread(target=run.reader, args=(i,)) for i in range(args.readers)]
        for t in threads:
            t.start()
        if relay:
            time.sleep(args.duration * 0.4)
            cut_at = time.monotonic()
            run.cut_window = (cut_at, cut_at + args.cut_seconds)
            relay.set_cut(True)
            time.sleep(args.cut_seconds)
            relay.set_cut(False)
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        peak = server.peak_rss_mb()
        checks = verify(run)
        server.stop()
    if pg_url:
        drop_postgres_database(args.postgres_url, pg_url)
    report(args, run, checks, elapsed, peak)


def report(args, run: Run, checks: dict, elapsed: float, peak: float) -> None:
    rows = []
    for key in sorted(run.latency):
        op, target = key.rsplit(" ", 1)
        times = run.latency[key]
        outcomes = {o: n for (p, t, o), n in run.outcomes.items() if p == op and t == target}
        rows.append(
            {
                "operation": op,
                "target": target,
                "count": len(times),
                "per_s": round(len(times) / elapsed, 1),
                "p50_ms": round(statistics.median(times) * 1000, 1),
                "p99_ms": round(percentile(times, 99) * 1000, 1),
                "outcomes": outcomes,
            }
        )
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()}",
        "writers": args.writers,
        "readers": args.readers,
        "duration_s": round(elapsed, 1),
        "postgres_cut_s": args.cut_seconds if "postgres" in args.targets else None,
        "server_peak_rss_mb": round(peak, 1),
        "operations": rows,
        "postgres_puts_started_during_cut": dict(run.pg_during_cut),
        "postgres_puts_started_5s_after_cut": dict(run.pg_after_cut),
        "verification": checks,
        "first_error_messages": {f"{o} {t} {c}": m for (o, t, c), m in sorted(run.messages.items())},
    }
    Path(args.out, "load.json").write_text(json.dumps(result, indent=2) + "\n")
    failed = [k for k in ("mismatched", "unexpected_listed", "missing_from_listing", "aborted_visible", "wrong_reads") if checks[k]]
    lines = [
        "# Load test",
        "",
        "Generated by `bench/load` (see its header for what it does). Loopback only; one Quiver",
        "server, pyarrow Flight clients in one Python process.",
        "",
        f"- Date: {result['date']}; machine: {result['machine']}",
        f"- {args.writers} writers and {args.readers} readers for {result['duration_s']} s; targets: {args.targets}",
        f"- PostgreSQL relay cut for {args.cut_seconds} s at 40% of the run",
        f"- Quiver server peak RSS: {result['server_peak_rss_mb']} MB",
        f"- Verification: {checks['assets_checked']} assets read back exactly as last committed; "
        + ("**FAILED: " + ", ".join(f"{k}: {checks[k][:5]}" for k in failed) + "**" if failed else "nothing else listed, no aborted put visible, no wrong read"),
        f"- PostgreSQL puts started during the cut: {dict(run.pg_during_cut)}; started 5 s or more after it: {dict(run.pg_after_cut)}",
        "",
        "| operation | target | count | per s | p50 ms | p99 ms | outcomes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        lines.append(
            f"| {r['operation']} | {r['target']} | {r['count']} | {r['per_s']} | {r['p50_ms']} | {r['p99_ms']} | {outcomes} |"
        )
    if run.messages:
        lines += ["", "First error message of each kind:", ""]
        lines += [f"- {o} {t} {c}: {m}" for (o, t, c), m in sorted(run.messages.items())]
    Path(args.out, "load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if failed:
        raise SystemExit("verification failed")


if __name__ == "__main__":
    main()
