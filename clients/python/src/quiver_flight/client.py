"""A typed Python client for Quiver, built on pyarrow.flight."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.flight as fl

from .errors import QuiverError, translate

Partition = Union[str, Mapping[str, str]]
PartitionColumn = Union[str, Mapping[str, str]]


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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PutResult":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    updated_at: str
    partitions: list = field(default_factory=list)

    @property
    def partition_keys(self) -> list:
        return [p["partition"] for p in self.partitions]


@dataclass(frozen=True)
class TargetInfo:
    name: str
    kind: str
    modes: list


def _asset_path(asset: Union[str, Sequence[str]]) -> str:
    if isinstance(asset, str):
        return asset
    return "/".join(asset)


def _to_reader(data: Any) -> pa.RecordBatchReader:
    """Streams any supported input as record batches without materializing readers."""
    if isinstance(data, pa.RecordBatchReader):
        return data
    if isinstance(data, pa.Table):
        return pa.RecordBatchReader.from_batches(data.schema, data.to_batches())
    if isinstance(data, pa.RecordBatch):
        return pa.RecordBatchReader.from_batches(data.schema, [data])
    module = type(data).__module__.split(".")[0]
    if module == "pandas":
        table = pa.Table.from_pandas(data, preserve_index=False)
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    if module == "polars":
        if type(data).__name__ == "LazyFrame":
            data = data.collect()
        table = data.to_arrow()
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    if hasattr(data, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(data)
    raise TypeError(
        f"cannot store {type(data).__name__}: pass a pyarrow Table, RecordBatch or "
        "RecordBatchReader, a pandas DataFrame, or a polars DataFrame"
    )


class Client:
    """A connection to a Quiver server.

    >>> c = Client("grpc://localhost:8815")
    >>> c.put(table, "sales/daily", target="parquet")
    >>> c.get("sales/daily", target="parquet")
    """

    def __init__(
        self,
        location: str = "grpc://localhost:8815",
        *,
        token: Optional[str] = None,
        tls_root_certs: Optional[bytes] = None,
        timeout: Optional[float] = None,
    ) -> None:
        kwargs: dict = {}
        if tls_root_certs is not None:
            kwargs["tls_root_certs"] = tls_root_certs
        self._flight = fl.FlightClient(location, **kwargs)
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self._options = fl.FlightCallOptions(headers=headers, timeout=timeout)

    def close(self) -> None:
        self._flight.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------------

    def put(
        self,
        data: Any,
        asset: Union[str, Sequence[str]],
        target: str,
        *,
        mode: str = "overwrite",
        partition: Optional[Partition] = None,
        partition_column: Optional[PartitionColumn] = None,
        key: Optional[Sequence[str]] = None,
        idempotency_key: Optional[str] = None,
        options: Optional[Mapping[str, Any]] = None,
    ) -> PutResult:
        """Stores `data` as `asset` in `target`, streaming it batch by batch.

        `mode` is "overwrite", "append" or "upsert" (with `key`). `partition` is a key or a
        {dimension: key} mapping; table targets also need `partition_column`.
        """
        command: dict = {"target": target, "asset": _asset_path(asset), "mode": mode}
        if partition is not None:
            command["partition"] = partition
        if partition_column is not None:
            command["partition_column"] = partition_column
        if key:
            command["key"] = list(key)
        if idempotency_key is not None:
            command["idempotency_key"] = idempotency_key
        if options:
            command["options"] = dict(options)
        reader = _to_reader(data)
        descriptor = fl.FlightDescriptor.for_command(json.dumps(command))
        try:
            writer, metadata = self._flight.do_put(descriptor, reader.schema, options=self._options)
            try:
                for batch in reader:
                    writer.write_batch(batch)
                writer.done_writing()
                answer = metadata.read()
            finally:
                writer.close()
        except pa.ArrowException as e:
            raise translate(e) from e
        if answer is None:
            raise QuiverError("the server answered the put without a result")
        return PutResult.from_json(json.loads(answer.to_pybytes()))

    # -- reads --------------------------------------------------------------------------

    def get_reader(
        self,
        asset: Union[str, Sequence[str]],
        target: Optional[str] = None,
        *,
        partition: Optional[Union[Partition, Sequence[Partition]]] = None,
        columns: Optional[Sequence[str]] = None,
        version: Optional[int] = None,
    ) -> pa.RecordBatchReader:
        """Streams an asset (or some partitions, or some columns of it)."""
        ticket: dict = {"asset": _asset_path(asset)}
        if target is not None:
            ticket["target"] = target
        if partition is not None:
            ticket["partition"] = list(partition) if isinstance(partition, (list, tuple)) else partition
        if columns is not None:
            ticket["columns"] = list(columns)
        if version is not None:
            ticket["version"] = version
        try:
            stream = self._flight.do_get(fl.Ticket(json.dumps(ticket)), options=self._options)
            return stream.to_reader()
        except pa.ArrowException as e:
            raise translate(e) from e

    def get(self, asset, target=None, *, partition=None, columns=None, version=None) -> pa.Table:
        """Reads a whole asset (or a selection) into a table."""
        reader = self.get_reader(asset, target, partition=partition, columns=columns, version=version)
        try:
            return reader.read_all()
        except pa.ArrowException as e:
            raise translate(e) from e

    # -- catalog ------------------------------------------------------------------------

    def list(self, prefix: Optional[str] = None, target: Optional[str] = None) -> list:
        """Every stored asset, optionally under a key prefix or in one target."""
        criteria = {k: v for k, v in {"prefix": prefix, "target": target}.items() if v is not None}
        try:
            infos = list(self._flight.list_flights(json.dumps(criteria).encode() if criteria else b"", options=self._options))
        except pa.ArrowException as e:
            raise translate(e) from e
        return [self._asset_info(i) for i in infos]

    def describe(self, asset: Union[str, Sequence[str]], target: str) -> dict:
        """The catalog record of an asset with its schema and write history."""
        return self._action("describe", {"target": target, "asset": _asset_path(asset)})

    def delete(self, asset: Union[str, Sequence[str]], target: str, *, partition: Optional[Partition] = None) -> dict:
        """Deletes an asset, or one partition of it."""
        body: dict = {"target": target, "asset": _asset_path(asset)}
        if partition is not None:
            body["partition"] = partition
        return self._action("delete", body)

    def targets(self) -> list:
        return [TargetInfo(**t) for t in self._action("list-targets", None)]

    def health(self) -> dict:
        return self._action("health", None)

    def _action(self, name: str, body: Optional[dict]) -> Any:
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            results = list(self._flight.do_action(fl.Action(name, payload), options=self._options))
        except pa.ArrowException as e:
            raise translate(e) from e
        return json.loads(results[0].body.to_pybytes())

    @staticmethod
    def _asset_info(info: fl.FlightInfo) -> AssetInfo:
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
            updated_at=meta["updated_at"],
            partitions=meta["partitions"],
        )


__all__ = ["Client", "PutResult", "AssetInfo", "TargetInfo"]
