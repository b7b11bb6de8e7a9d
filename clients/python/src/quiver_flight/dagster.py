"""Dagster integration: a resource handing out clients, and an IO manager storing assets.

    from quiver_flight.dagster import QuiverIOManager, QuiverResource

    defs = Definitions(
        assets=[...],
        resources={
            "io_manager": QuiverIOManager(location="grpc://quiver:8815", target="duckdb"),
            "quiver": QuiverResource(location="grpc://quiver:8815"),
        },
    )

Per-asset metadata overrides the IO manager: `quiver/target`, `quiver/mode` ("overwrite",
"append", "upsert"), `quiver/key` (upsert key columns), and `partition_expr` (the column, or
{dimension: column} for multi-partitions, holding each row's partition — as in Dagster's DuckDB
IO manager). Table targets need `partition_expr` for partitioned assets; a run over several
partitions (a single-run backfill) needs it everywhere, to split the output into one put per
partition: for a time-window dimension a row belongs to the partition whose window holds its
value (`start <= value < end`) — or whose key it holds, for a string column; for a static
dimension, the partition whose key it holds. An output may instead be a `dict` from partition
key to data. Inputs honour `columns` and `allow_missing_partitions` metadata and are returned
as the type they are annotated with (`pandas.DataFrame`, `polars.DataFrame`/`LazyFrame`,
`pyarrow.RecordBatchReader`, `pyarrow.Table`, `Optional[...]` of these: None when the asset is
absent, and `dict[str, ...]` of these: one entry per partition key).
"""

from __future__ import annotations

import hashlib
import os
import typing
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import pyarrow as pa
import pyarrow.compute as pc
from dagster import (
    ConfigurableIOManager,
    ConfigurableResource,
    InputContext,
    MetadataValue,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    OutputContext,
    PartitionsDefinition,
    TableColumn,
    TableSchema,
    TimeWindowPartitionsDefinition,
)

from .client import Client, Partition, PutResult, asset_path
from .errors import NotFound

WriteMode = Literal["overwrite", "append", "upsert"]


class QuiverResource(ConfigurableResource):  # type: ignore[type-arg]
    """Connection settings of a Quiver server; `get_client()` opens a `Client`.

    `location` defaults to `QUIVER_SERVER`, then `grpc://localhost:8815`; `token` to
    `QUIVER_TOKEN`. Certificates and keys are PEM text (use `EnvVar` to keep them out of code).
    """

    location: Optional[str] = None
    """Server URI, `grpc://host:port` or `grpc+tls://host:port`."""
    token: Optional[str] = None
    """Bearer token (an API token)."""
    username: Optional[str] = None
    """User name for the Flight handshake (basic auth), with `password`."""
    password: Optional[str] = None
    tls_root_certs: Optional[str] = None
    """PEM certificates to trust instead of the system's, for a server with a private CA."""
    cert_chain: Optional[str] = None
    """PEM client certificate chain for mutual TLS, with `private_key`."""
    private_key: Optional[str] = None
    override_hostname: Optional[str] = None
    """Host name to check the server's certificate against."""
    timeout: Optional[float] = None
    """Deadline of each call, in seconds."""
    max_batch_bytes: int = 8 * 1024 * 1024
    """Largest record batch a put sends; bigger ones are sliced."""
    retries: int = 3
    """Retries of a put (each carries an idempotency key) on a retryable error."""

    def get_client(self) -> Client:
        return Client(
            self.location,
            token=self.token,
            username=self.username,
            password=self.password,
            tls_root_certs=self.tls_root_certs,
            cert_chain=self.cert_chain,
            private_key=self.private_key,
            override_hostname=self.override_hostname,
            timeout=self.timeout,
            max_batch_bytes=self.max_batch_bytes,
            retries=self.retries,
        )


def _metadata(context: Any) -> Dict[str, Any]:
    """Definition metadata of an input or output, across Dagster versions."""
    if hasattr(context, "definition_metadata"):
        return dict(context.definition_metadata or {})
    return dict(getattr(context, "metadata", None) or {})


def _partition(key: Any) -> Partition:
    if isinstance(key, MultiPartitionKey):
        return dict(key.keys_by_dimension)
    return str(key)


def idempotency_key(context: OutputContext, partition: Optional[Partition]) -> str:
    """The same for every attempt of one step's output (one partition of it): a retried step
    never writes twice; another run writes again."""
    if isinstance(partition, Mapping):
        part = ",".join(f"{k}={v}" for k, v in sorted(partition.items()))
    else:
        part = partition or ""
    key = f"dagster/{context.run_id}/{context.step_key}/{context.name}/{part}"
    if len(key.encode()) > 256:
        key = "dagster/" + hashlib.sha256(key.encode()).hexdigest()
    return key


# -- splitting a run's output into its partitions ------------------------------------------


def _as_table(obj: Any) -> pa.Table:
    """The whole of an output as one table (a run over several partitions must split it)."""
    from .client import record_batches

    schema, batches = record_batches(obj)
    return pa.Table.from_batches(list(batches), schema=schema)


def _bound(moment: Any, column_type: pa.DataType) -> pa.Scalar:
    if pa.types.is_date(column_type):
        return pa.scalar(moment.date(), column_type)
    if pa.types.is_timestamp(column_type):
        if column_type.tz is None:
            # A zone-less column holds wall-clock times of the partitions' time zone.
            return pa.scalar(moment.replace(tzinfo=None), column_type)
        return pa.scalar(moment, column_type)
    raise TypeError(f"has type {column_type}")


def _dimension_mask(
    table: pa.Table, column: str, key: str, partitions_def: Optional[PartitionsDefinition]
) -> Any:
    """Which rows of `table` belong to partition `key` of one dimension."""
    if column not in table.column_names:
        raise ValueError(
            f"partition_expr names column '{column}', which the output does not have "
            f"(its columns: {', '.join(table.column_names)})"
        )
    values = table.column(column)
    kind = values.type
    textual = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    if isinstance(partitions_def, TimeWindowPartitionsDefinition) and not textual:
        window = partitions_def.time_window_for_partition_key(key)
        try:
            start, end = _bound(window.start, kind), _bound(window.end, kind)
        except TypeError:
            raise ValueError(
                f"partition_expr column '{column}' has type {kind}; time-window partitions "
                "need a date, timestamp or string column"
            ) from None
        return pc.and_(pc.greater_equal(values, start), pc.less(values, end))
    return pc.equal(values, pa.scalar(key).cast(kind))


def _dimensions(partitions_def: Optional[PartitionsDefinition]) -> Dict[str, Optional[PartitionsDefinition]]:
    if isinstance(partitions_def, MultiPartitionsDefinition):
        return {d.name: d.partitions_def for d in partitions_def.partitions_defs}
    return {}


def split_by_partition(
    table: pa.Table,
    keys: Sequence[Any],
    partition_expr: Union[str, Mapping[str, str]],
    partitions_def: Optional[PartitionsDefinition],
) -> List[Tuple[Partition, pa.Table]]:
    """One table per partition key: the rows whose `partition_expr` columns fall in it.
    A row that belongs to none of the keys is an error (it would be lost)."""
    dimensions = _dimensions(partitions_def)
    pieces: List[Tuple[Partition, pa.Table]] = []
    placed = 0
    for key in keys:
        partition = _partition(key)
        if isinstance(partition, Mapping):
            if not isinstance(partition_expr, Mapping):
                raise ValueError(
                    "a multi-partitioned asset needs partition_expr as {dimension: column}, "
                    f"one column per dimension of {sorted(partition)}"
                )
            mask = None
            for dimension, value in partition.items():
                if dimension not in partition_expr:
                    raise ValueError(f"partition_expr names no column for dimension '{dimension}'")
                part = _dimension_mask(table, partition_expr[dimension], value, dimensions.get(dimension))
                mask = part if mask is None else pc.and_(mask, part)
        else:
            if not isinstance(partition_expr, str):
                raise ValueError("partition_expr of a single-dimension asset is one column name")
            mask = _dimension_mask(table, partition_expr, partition, partitions_def)
        piece = table.filter(mask)
        placed += piece.num_rows
        pieces.append((partition, piece))
    if placed != table.num_rows:
        raise ValueError(
            f"{table.num_rows - placed} of the output's {table.num_rows} rows belong to none of "
            f"the run's {len(keys)} partitions ({keys[0]} … {keys[-1]}) by partition_expr "
            f"{partition_expr!r}; every row must belong to exactly one partition of the run"
        )
    return pieces


# -- converting what is read --------------------------------------------------------------


def _convert(table: pa.Table, wanted: Any) -> Any:
    """Returns `table` as the type an input is annotated with."""
    name = getattr(wanted, "__name__", "")
    module = getattr(wanted, "__module__", "") or ""
    if module.startswith("pandas") and name == "DataFrame":
        return table.to_pandas()
    if module.startswith("polars") and name in ("DataFrame", "LazyFrame"):
        import polars as pl

        frame = pl.DataFrame(pl.from_arrow(table))
        return frame.lazy() if name == "LazyFrame" else frame
    if wanted is pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    return table


def _unwrap(wanted: Any) -> Tuple[Any, bool, bool]:
    """(the data type, whether None is allowed, whether a dict per partition is wanted)."""
    optional = False
    per_partition = False
    args = typing.get_args(wanted)
    if typing.get_origin(wanted) is Union and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        wanted = rest[0] if len(rest) == 1 else None
        args = typing.get_args(wanted)
    origin = typing.get_origin(wanted)
    if origin in (dict, Dict) or origin is Mapping:
        per_partition = True
        wanted = args[1] if len(args) == 2 else None
    return wanted, optional, per_partition


def _is_nothing(context: OutputContext) -> bool:
    dagster_type = context.dagster_type
    if dagster_type is None:
        return False
    return bool(dagster_type.is_nothing) or dagster_type.typing_type in (type(None), None)


def _common_location(locations: Sequence[str]) -> str:
    if len(locations) == 1:
        return locations[0]
    prefix = os.path.commonprefix(list(locations))
    return prefix.rsplit("?", 1)[0] if "?" in prefix else prefix.rsplit("/", 1)[0]


def _table_name(location: str) -> Optional[str]:
    """`schema.table` of a table target's location (`duckdb://path#schema.table`)."""
    if "#" not in location:
        return None
    return location.split("#", 1)[1].split("?", 1)[0]


class QuiverIOManager(QuiverResource, ConfigurableIOManager):
    """Stores each asset in a Quiver target: asset key `["sales", "daily"]` is asset
    `sales/daily`; each partition is stored separately (file targets: one file per
    partition, `<asset>/<partition key>`; table targets: the partition's rows)."""

    target: str = "parquet"
    """Default target; override per asset with `quiver/target` metadata."""
    mode: WriteMode = "overwrite"
    """Default write mode; override per asset with `quiver/mode` metadata."""

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            if _is_nothing(context):
                return
            raise ValueError(
                f"asset {asset_path(context.asset_key.path)} returned None; return the data to "
                "store, or annotate the asset `-> None` (or use a Nothing output) when it "
                "stores nothing"
            )
        meta = _metadata(context)
        asset = asset_path(context.asset_key.path)
        target = str(meta.get("quiver/target", self.target))
        mode = meta.get("quiver/mode", self.mode)
        key = meta.get("quiver/key")
        partition_expr = meta.get("partition_expr")

        puts: List[Tuple[Optional[Partition], Any]]
        if not context.has_asset_partitions:
            puts = [(None, obj)]
        else:
            keys = list(context.asset_partition_keys)
            if isinstance(obj, Mapping):
                by_key = {str(k): v for k, v in obj.items()}
                missing = [str(k) for k in keys if str(k) not in by_key]
                if missing:
                    raise ValueError(f"the output has no data for partitions {missing}")
                puts = [(_partition(k), by_key[str(k)]) for k in keys]
            elif len(keys) == 1:
                puts = [(_partition(keys[0]), obj)]
            elif partition_expr is None:
                raise ValueError(
                    f"a run of asset {asset} over {len(keys)} partitions needs partition_expr "
                    "metadata (the column holding each row's partition) to split its output, "
                    "or an output that is a dict from partition key to data"
                )
            else:
                puts = list(
                    split_by_partition(_as_table(obj), keys, partition_expr, context.asset_partitions_def)
                )

        results: List[PutResult] = []
        with self.get_client() as client:
            for partition, data in puts:
                results.append(
                    client.put(
                        data,
                        asset,
                        target,
                        mode=mode,
                        partition=partition,
                        partition_column=partition_expr if partition is not None else None,
                        key=key,
                        idempotency_key=idempotency_key(context, partition),
                    )
                )
        context.add_output_metadata(self._output_metadata(results, partitioned=context.has_asset_partitions))

    @staticmethod
    def _output_metadata(results: Sequence[PutResult], *, partitioned: bool) -> Dict[str, Any]:
        last = results[-1]
        rows = sum(r.rows for r in results)
        location = _common_location([r.location for r in results])
        metadata: Dict[str, Any] = {
            "dagster/uri": MetadataValue.text(location),
            "quiver/target": last.target,
            "quiver/version": last.version,
            "quiver/rows_written": rows,
        }
        if partitioned:
            metadata["dagster/partition_row_count"] = rows
        elif last.mode == "overwrite":
            # After an unpartitioned overwrite the asset holds exactly the rows sent.
            metadata["dagster/row_count"] = rows
        if any(r.replayed for r in results):
            metadata["quiver/replayed"] = True
        table = _table_name(location)
        if table is not None:
            metadata["dagster/table_name"] = table
        if sum(r.bytes for r in results):
            metadata["quiver/bytes"] = sum(r.bytes for r in results)
        if last.schema is not None:
            metadata["dagster/column_schema"] = TableSchema(
                columns=[TableColumn(name=f.name, type=str(f.type)) for f in last.schema]
            )
        return metadata

    def load_input(self, context: InputContext) -> Any:
        upstream = context.upstream_output
        upstream_meta = _metadata(upstream) if upstream is not None else {}
        meta = _metadata(context)
        asset = asset_path(context.asset_key.path)
        target = str(upstream_meta.get("quiver/target", self.target))
        columns = meta.get("columns")
        allow_missing = bool(meta.get("allow_missing_partitions", False))
        wanted, optional, per_partition = _unwrap(
            context.dagster_type.typing_type if context.dagster_type else None
        )
        keys: Optional[List[Any]] = list(context.asset_partition_keys) if context.has_asset_partitions else None

        with self.get_client() as client:
            try:
                if keys is not None and allow_missing:
                    stored = self._stored_partitions(client, asset, target)
                    keys = [k for k in keys if _partition(k) in stored]
                if per_partition:
                    return {
                        str(k): _convert(client.get(asset, target, partition=_partition(k), columns=columns), wanted)
                        for k in (keys or [])
                    }
                if keys is not None and not keys:
                    return _convert(self._empty(client, asset, target, columns), wanted)
                partitions = [_partition(k) for k in keys] if keys is not None else None
                table = client.get(asset, target, partition=partitions, columns=columns)
            except NotFound:
                if optional:
                    return None
                raise
        return _convert(table, wanted)

    @staticmethod
    def _stored_partitions(client: Client, asset: str, target: str) -> List[Partition]:
        for info in client.list(prefix=asset, target=target):
            if info.asset == asset:
                return info.partition_keys
        raise NotFound(f"asset '{asset}' not found in target '{target}'")

    @staticmethod
    def _empty(client: Client, asset: str, target: str, columns: Optional[Sequence[str]]) -> pa.Table:
        """No stored partition was asked for: the asset's schema with no rows."""
        for info in client.list(prefix=asset, target=target):
            if info.asset == asset:
                table = info.schema.empty_table()
                return table.select(list(columns)) if columns else table
        raise NotFound(f"asset '{asset}' not found in target '{target}'")


__all__ = ["QuiverIOManager", "QuiverResource", "idempotency_key", "split_by_partition"]
