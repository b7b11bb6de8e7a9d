"""A Dagster IO manager that stores assets in Quiver.

    from quiver_flight.dagster import QuiverIOManager

    defs = Definitions(
        assets=[...],
        resources={"io_manager": QuiverIOManager(location="grpc://quiver:8815", target="duckdb")},
    )

Per-asset metadata overrides the resource: `quiver/target`, `quiver/mode` ("overwrite",
"append", "upsert"), `quiver/key` (upsert key columns), and `partition_expr` (the column, or
{dimension: column} for multi-partitions, holding the partition key — as in Dagster's DuckDB
IO manager; required by table targets for partitioned assets). Inputs honour `columns`
metadata. Outputs may be pyarrow Tables/RecordBatchReaders, pandas or polars DataFrames;
inputs are returned as the type the input is annotated with.
"""

from __future__ import annotations

from typing import Any, Optional

import pyarrow as pa
from dagster import (
    ConfigurableIOManager,
    InputContext,
    MetadataValue,
    MultiPartitionKey,
    OutputContext,
    TableColumn,
    TableSchema,
)

from .client import Client


def _metadata(context: Any) -> dict:
    """Definition metadata of an input or output, across Dagster versions."""
    if hasattr(context, "definition_metadata"):
        return dict(context.definition_metadata or {})
    return dict(getattr(context, "metadata", None) or {})


def _partition(key: Any) -> Any:
    if isinstance(key, MultiPartitionKey):
        return dict(key.keys_by_dimension)
    return str(key)


def _convert(table: pa.Table, wanted: Any) -> Any:
    """Returns `table` as the type an input is annotated with."""
    name = getattr(wanted, "__name__", "")
    module = getattr(wanted, "__module__", "") or ""
    if module.startswith("pandas") and name == "DataFrame":
        return table.to_pandas()
    if module.startswith("polars") and name in ("DataFrame", "LazyFrame"):
        import polars as pl

        frame = pl.from_arrow(table)
        return frame.lazy() if name == "LazyFrame" else frame
    if wanted is pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    return table


class QuiverIOManager(ConfigurableIOManager):
    """Stores each asset in a Quiver target: asset key `["sales", "daily"]` is asset
    `sales/daily`; a partitioned asset stores each partition separately."""

    location: str = "grpc://localhost:8815"
    """Quiver server URI."""
    target: str = "parquet"
    """Default target; override per asset with `quiver/target` metadata."""
    mode: str = "overwrite"
    """Default write mode; override per asset with `quiver/mode` metadata."""
    token: Optional[str] = None
    """Bearer token, when the server requires one."""
    timeout: Optional[float] = None
    """Seconds before a call is abandoned."""

    def _client(self) -> Client:
        return Client(self.location, token=self.token, timeout=self.timeout)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        meta = _metadata(context)
        asset = "/".join(context.asset_key.path)
        partition = _partition(context.asset_partition_key) if context.has_asset_partitions else None
        with self._client() as client:
            result = client.put(
                obj,
                asset,
                meta.get("quiver/target", self.target),
                mode=meta.get("quiver/mode", self.mode),
                partition=partition,
                partition_column=meta.get("partition_expr") if partition is not None else None,
                key=meta.get("quiver/key"),
            )
        output = {
            "rows": result.rows,
            "version": result.version,
            "location": MetadataValue.text(result.location),
            "quiver/target": result.target,
        }
        if result.bytes:
            output["bytes"] = result.bytes
        if result.schema is not None:
            output["dagster/column_schema"] = TableSchema(
                columns=[TableColumn(name=f.name, type=str(f.type)) for f in result.schema]
            )
        context.add_output_metadata(output)

    def load_input(self, context: InputContext) -> Any:
        upstream = context.upstream_output
        upstream_meta = _metadata(upstream) if upstream is not None else {}
        meta = _metadata(context)
        asset = "/".join(context.asset_key.path)
        target = upstream_meta.get("quiver/target", self.target)
        partitions = None
        if context.has_asset_partitions:
            partitions = [_partition(k) for k in context.asset_partition_keys]
        with self._client() as client:
            table = client.get(asset, target, partition=partitions, columns=meta.get("columns"))
        wanted = context.dagster_type.typing_type if context.dagster_type else None
        return _convert(table, wanted)
