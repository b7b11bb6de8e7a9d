"""A typed Python client for Quiver, built on pyarrow.flight."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import pyarrow as pa
import pyarrow.flight as fl

from .errors import QuiverError, translate

Mode = Literal["overwrite", "append", "upsert"]
Partition = Union[str, Mapping[str, str]]
PartitionColumn = Union[str, Mapping[str, str]]
AssetKey = Union[str, Sequence[str]]

DEFAULT_SERVER = "grpc://localhost:8815"
DEFAULT_MAX_BATCH_BYTES = 8 * 1024 * 1024
"""The byte budget of one put message. The server refuses messages above
`limits.max_message_bytes` (256 MiB by default); 8 MiB batches stay far below it and below
what a proxy in between is likely to allow, and are large enough to cost nothing in speed."""

_T = TypeVar("_T")


def _from_json(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """Builds a dataclass from a JSON object, ignoring fields this client does not know."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class PutResult:
    """What a committed put stored (the server's PutResult metadata)."""

    asset: str
    target: str
    mode: str
    rows: int
    bytes: int
    location: str
    version: int
    duration_ms: int
    replayed: bool = False
    partition: Optional[Partition] = None
    idempotency_key: Optional[str] = None
    schema: Optional[pa.Schema] = field(default=None, compare=False, repr=False)
    """The schema this client sent (not part of the server's answer)."""


@dataclass(frozen=True)
class PartitionInfo:
    """One stored partition of an asset."""

    partition: Partition
    rows: int
    bytes: int
    location: str
    version: int
    updated_at: str


@dataclass(frozen=True)
class Commit:
    """One commit in an asset's history."""

    version: int
    mode: str
    rows: int
    bytes: int
    location: str
    duration_ms: int
    written_at: str
    partition: Optional[Partition] = None
    idempotency_key: Optional[str] = None


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool


@dataclass(frozen=True)
class AssetInfo:
    """One asset in the catalog."""

    target: str
    asset: str
    kind: str
    version: int
    rows: int
    bytes: int
    location: str
    schema: pa.Schema
    created_at: str
    updated_at: str
    partitioned: bool = False
    partitions: list[PartitionInfo] = field(default_factory=list)

    @property
    def partition_keys(self) -> list[Partition]:
        return [p.partition for p in self.partitions]


@dataclass(frozen=True)
class Description:
    """An asset's catalog record with its columns and its commits, newest first."""

    target: str
    asset: str
    kind: str
    version: int
    rows: int
    bytes: int
    location: str
    created_at: str
    updated_at: str
    partitioned: bool
    partitions: list[PartitionInfo]
    columns: list[Column]
    history: list[Commit]


@dataclass(frozen=True)
class Deleted:
    asset: str
    target: str
    partition: Optional[Partition] = None


@dataclass(frozen=True)
class TargetInfo:
    name: str
    kind: str
    modes: list[str]


@dataclass(frozen=True)
class TargetHealth:
    ok: bool
    error: Optional[str] = None


@dataclass(frozen=True)
class Health:
    status: Literal["ok", "degraded"]
    targets: dict[str, TargetHealth]


def asset_path(asset: AssetKey) -> str:
    """`["sales", "daily"]` or `"sales/daily"` as the asset key `sales/daily`."""
    if isinstance(asset, str):
        return asset
    return "/".join(asset)


def _partitions(raw: Iterable[Mapping[str, Any]]) -> list[PartitionInfo]:
    return [_from_json(PartitionInfo, p) for p in raw]


# -- streaming the data of a put ------------------------------------------------------------


def split_batch(batch: pa.RecordBatch, max_bytes: int) -> Iterator[pa.RecordBatch]:
    """Slices `batch` (zero-copy) into batches of at most `max_bytes` each; a single row
    larger than that stays one batch."""
    size = int(batch.nbytes)
    rows = int(batch.num_rows)
    if size <= max_bytes or rows <= 1:
        yield batch
        return
    step = max(1, rows * max_bytes // size)
    for start in range(0, rows, step):
        yield from split_batch(batch.slice(start, step), max_bytes)


def _module(data: Any) -> str:
    return type(data).__module__.split(".")[0]


def _pandas_batches(frame: Any, max_bytes: int) -> Tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Converts a pandas DataFrame a slice of rows at a time, so a frame of any size is sent
    without an Arrow copy of the whole of it."""
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    total = len(frame)
    per_row = max(1, int(frame.memory_usage(index=False, deep=False).sum()) // max(1, total))
    step = max(1, max_bytes // per_row)

    def generate() -> Iterator[pa.RecordBatch]:
        for start in range(0, total, step):
            chunk = pa.RecordBatch.from_pandas(
                frame.iloc[start : start + step], schema=schema, preserve_index=False
            )
            yield from split_batch(chunk, max_bytes)

    return schema, generate()


def _polars_lazy_batches(lazy: Any) -> Tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Runs a polars LazyFrame on the streaming engine, sending each chunk as it comes:
    the result is never collected whole."""
    import polars as pl

    schema = pl.DataFrame(schema=lazy.collect_schema()).to_arrow().schema

    def generate() -> Iterator[pa.RecordBatch]:
        for frame in lazy.collect_batches():
            table = frame.to_arrow()
            if not table.schema.equals(schema):
                table = table.cast(schema)
            yield from table.to_batches()

    return schema, generate()


def record_batches(data: Any, max_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> Tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema of `data` and its record batches, each at most `max_bytes` (unless one row
    is larger). Readers, polars LazyFrames and Arrow C streams are consumed as they are read."""
    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    if isinstance(data, pa.Table):
        schema, batches = data.schema, iter(data.to_batches())
    elif isinstance(data, pa.RecordBatch):
        schema, batches = data.schema, iter([data])
    elif isinstance(data, pa.RecordBatchReader):
        schema, batches = data.schema, iter(data)
    elif _module(data) == "pandas" and type(data).__name__ == "DataFrame":
        return _pandas_batches(data, max_bytes)
    elif _module(data) == "polars" and type(data).__name__ == "LazyFrame":
        schema, batches = _polars_lazy_batches(data)
    elif _module(data) == "polars" and type(data).__name__ == "DataFrame":
        table = data.to_arrow()
        schema, batches = table.schema, iter(table.to_batches())
    elif hasattr(data, "__arrow_c_stream__"):
        reader = pa.RecordBatchReader.from_stream(data)
        schema, batches = reader.schema, iter(reader)
    elif hasattr(data, "__arrow_c_array__"):
        batch = pa.record_batch(data)
        schema, batches = batch.schema, iter([batch])
    else:
        raise TypeError(
            f"cannot store {type(data).__name__}: pass a pyarrow Table, RecordBatch or "
            "RecordBatchReader, a pandas DataFrame, a polars DataFrame or LazyFrame, or an "
            "object with __arrow_c_stream__"
        )
    return schema, (piece for batch in batches for piece in split_batch(batch, max_bytes))


def _replayable(data: Any) -> bool:
    """Whether `data` can be sent a second time (a reader or stream cannot)."""
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return True
    return _module(data) in ("pandas", "polars")


# -- the client -----------------------------------------------------------------------------


class Client:
    """A connection to a Quiver server.

    >>> c = Client("grpc://localhost:8815")
    >>> c.put(table, "sales/daily", target="parquet")
    >>> c.get("sales/daily", target="parquet")

    `location` defaults to `QUIVER_SERVER`, then `grpc://localhost:8815`; `token` to
    `QUIVER_TOKEN` (as the `quiver` command line does). `username`/`password` log in with
    the Flight handshake instead. `grpc+tls://` locations use TLS: `tls_root_certs` (PEM) to
    trust a private CA, `cert_chain`/`private_key` (PEM) for mutual TLS. `timeout` is the
    deadline of each call in seconds. Puts carrying an `idempotency_key` are retried up to
    `retries` times on a retryable error (with a doubling pause from `retry_backoff`
    seconds) when their data can be sent again (not a reader or a stream).
    """

    def __init__(
        self,
        location: Optional[str] = None,
        *,
        token: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        tls_root_certs: Optional[Union[str, bytes]] = None,
        cert_chain: Optional[Union[str, bytes]] = None,
        private_key: Optional[Union[str, bytes]] = None,
        override_hostname: Optional[str] = None,
        disable_server_verification: bool = False,
        timeout: Optional[float] = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        retries: int = 3,
        retry_backoff: float = 0.5,
    ) -> None:
        if max_batch_bytes < 1:
            raise ValueError(f"max_batch_bytes must be positive, not {max_batch_bytes}")
        self.location = location or os.environ.get("QUIVER_SERVER") or DEFAULT_SERVER
        if token is None and username is None:
            token = os.environ.get("QUIVER_TOKEN") or None
        if (cert_chain is None) != (private_key is None):
            raise ValueError("mutual TLS needs both cert_chain and private_key")
        kwargs: dict[str, Any] = {}
        if tls_root_certs is not None:
            kwargs["tls_root_certs"] = tls_root_certs
        if cert_chain is not None:
            kwargs["cert_chain"] = cert_chain
            kwargs["private_key"] = private_key
        if override_hostname is not None:
            kwargs["override_hostname"] = override_hostname
        if disable_server_verification:
            kwargs["disable_server_verification"] = True
        self.max_batch_bytes = max_batch_bytes
        self.retries = retries
        self.retry_backoff = retry_backoff
        self._timeout = timeout
        try:
            self._flight = fl.FlightClient(self.location, **kwargs)
            headers: list[Tuple[bytes, bytes]] = []
            if username is not None:
                header = self._flight.authenticate_basic_token(
                    username, password or "", fl.FlightCallOptions(timeout=timeout)
                )
                headers.append((bytes(header[0]), bytes(header[1])))
            elif token:
                headers.append((b"authorization", f"Bearer {token}".encode()))
        except pa.ArrowException as e:
            raise translate(e) from e
        self._options = fl.FlightCallOptions(headers=headers, timeout=timeout)

    def close(self) -> None:
        self._flight.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------------

    def put(
        self,
        data: Any,
        asset: AssetKey,
        target: str,
        *,
        mode: Mode = "overwrite",
        partition: Optional[Partition] = None,
        partition_column: Optional[PartitionColumn] = None,
        key: Optional[Sequence[str]] = None,
        idempotency_key: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
        max_batch_bytes: Optional[int] = None,
    ) -> PutResult:
        """Stores `data` as `asset` in `target`, streaming it in batches of at most
        `max_batch_bytes` (the client's default unless given).

        `data` is a pyarrow Table, RecordBatch or RecordBatchReader, a pandas DataFrame, a
        polars DataFrame or LazyFrame, or anything with `__arrow_c_stream__`. `mode` is
        "overwrite", "append" or "upsert" (with `key`). `partition` is a key or a
        {dimension: key} mapping; table targets also need `partition_column`.
        """
        command: dict[str, Any] = {"target": target, "asset": asset_path(asset), "mode": mode}
        if partition is not None:
            command["partition"] = partition if isinstance(partition, str) else dict(partition)
        if partition_column is not None:
            command["partition_column"] = (
                partition_column if isinstance(partition_column, str) else dict(partition_column)
            )
        if key:
            command["key"] = list(key)
        if idempotency_key is not None:
            command["idempotency_key"] = idempotency_key
        if options:
            command["options"] = dict(options)
        descriptor = fl.FlightDescriptor.for_command(json.dumps(command))
        budget = max_batch_bytes or self.max_batch_bytes
        attempts = 1 + (self.retries if idempotency_key is not None and _replayable(data) else 0)
        for attempt in range(attempts):
            try:
                return self._put_once(descriptor, data, budget)
            except QuiverError as e:
                if not e.retryable or attempt + 1 == attempts:
                    raise
            time.sleep(min(self.retry_backoff * 2**attempt, 10.0))
        raise AssertionError("unreachable")

    def _put_once(self, descriptor: Any, data: Any, budget: int) -> PutResult:
        schema, batches = record_batches(data, budget)
        try:
            writer, metadata = self._flight.do_put(descriptor, schema, options=self._options)
            try:
                for batch in batches:
                    writer.write_batch(batch)
                writer.done_writing()
                answer = metadata.read()
            except pa.ArrowException:
                # A refused put breaks the stream; closing the writer raises the server's
                # status, which says why.
                writer.close()
                raise
            writer.close()
        except pa.ArrowException as e:
            raise translate(e) from e
        if answer is None:
            raise QuiverError("the server answered the put without a result")
        result = _from_json(PutResult, json.loads(answer.to_pybytes()))
        return replace(result, schema=schema)

    # -- reads --------------------------------------------------------------------------

    def get_reader(
        self,
        asset: AssetKey,
        target: Optional[str] = None,
        *,
        partition: Optional[Union[Partition, Sequence[Partition]]] = None,
        columns: Optional[Sequence[str]] = None,
        version: Optional[int] = None,
    ) -> pa.RecordBatchReader:
        """Streams an asset (or some partitions, or some columns of it)."""
        ticket: dict[str, Any] = {"asset": asset_path(asset)}
        if target is not None:
            ticket["target"] = target
        if partition is not None:
            if isinstance(partition, (str, Mapping)):
                ticket["partition"] = partition if isinstance(partition, str) else dict(partition)
            else:
                ticket["partition"] = [p if isinstance(p, str) else dict(p) for p in partition]
        if columns is not None:
            ticket["columns"] = list(columns)
        if version is not None:
            ticket["version"] = version
        try:
            stream = self._flight.do_get(fl.Ticket(json.dumps(ticket)), options=self._options)
            return stream.to_reader()
        except pa.ArrowException as e:
            raise translate(e) from e

    def get(
        self,
        asset: AssetKey,
        target: Optional[str] = None,
        *,
        partition: Optional[Union[Partition, Sequence[Partition]]] = None,
        columns: Optional[Sequence[str]] = None,
        version: Optional[int] = None,
    ) -> pa.Table:
        """Reads a whole asset (or a selection) into a table."""
        reader = self.get_reader(asset, target, partition=partition, columns=columns, version=version)
        try:
            return reader.read_all()
        except pa.ArrowException as e:
            raise translate(e) from e

    # -- catalog ------------------------------------------------------------------------

    def list(self, prefix: Optional[str] = None, target: Optional[str] = None) -> List[AssetInfo]:
        """Every stored asset, optionally under a key prefix or in one target."""
        criteria = {k: v for k, v in {"prefix": prefix, "target": target}.items() if v is not None}
        body = json.dumps(criteria).encode() if criteria else b""
        try:
            infos = [i for i in self._flight.list_flights(body, options=self._options)]
        except pa.ArrowException as e:
            raise translate(e) from e
        return [self._asset_info(i) for i in infos]

    def describe(self, asset: AssetKey, target: str) -> Description:
        """The catalog record of an asset with its columns and write history."""
        raw = self._action("describe", {"target": target, "asset": asset_path(asset)})
        return Description(
            target=raw["target"],
            asset=raw["asset"],
            kind=raw["kind"],
            version=raw["version"],
            rows=raw["rows"],
            bytes=raw["bytes"],
            location=raw["location"],
            created_at=raw["created_at"],
            updated_at=raw["updated_at"],
            partitioned=raw.get("partitioned", False),
            partitions=_partitions(raw.get("partitions", [])),
            columns=[_from_json(Column, c) for c in raw["schema"]],
            history=[_from_json(Commit, c) for c in raw["history"]],
        )

    def delete(self, asset: AssetKey, target: str, *, partition: Optional[Partition] = None) -> Deleted:
        """Deletes an asset, or one partition of it."""
        body: dict[str, Any] = {"target": target, "asset": asset_path(asset)}
        if partition is not None:
            body["partition"] = partition if isinstance(partition, str) else dict(partition)
        raw = self._action("delete", body)
        return Deleted(asset=raw["deleted"], target=raw["target"], partition=raw.get("partition"))

    def targets(self) -> List[TargetInfo]:
        return [_from_json(TargetInfo, t) for t in self._action("list-targets", None)]

    def health(self) -> Health:
        raw = self._action("health", None)
        return Health(
            status=raw["status"],
            targets={name: _from_json(TargetHealth, t) for name, t in raw["targets"].items()},
        )

    def _action(self, name: str, body: Optional[Mapping[str, Any]]) -> Any:
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            results = [r for r in self._flight.do_action(fl.Action(name, payload), options=self._options)]
        except pa.ArrowException as e:
            raise translate(e) from e
        return json.loads(results[0].body.to_pybytes())

    @staticmethod
    def _asset_info(info: Any) -> AssetInfo:
        meta = json.loads(info.app_metadata)
        return AssetInfo(
            target=meta["target"],
            asset=meta["asset"],
            kind=meta["kind"],
            version=meta["version"],
            rows=meta["rows"],
            bytes=meta["bytes"],
            location=meta["location"],
            schema=info.schema,
            created_at=meta.get("created_at", ""),
            updated_at=meta["updated_at"],
            partitioned=meta.get("partitioned", False),
            partitions=_partitions(meta.get("partitions", [])),
        )


__all__ = [
    "DEFAULT_MAX_BATCH_BYTES",
    "AssetInfo",
    "Client",
    "Column",
    "Commit",
    "Deleted",
    "Description",
    "Health",
    "Mode",
    "PartitionInfo",
    "PutResult",
    "TargetHealth",
    "TargetInfo",
    "asset_path",
    "record_batches",
    "split_batch",
]
