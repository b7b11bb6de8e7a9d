"""Real Dagster materializations through QuiverIOManager."""

import pandas as pd
import pyarrow as pa
import pytest
from dagster import (
    AllPartitionMapping,
    AssetIn,
    DailyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
    asset,
    materialize,
)

import quiver_flight
from quiver_flight.dagster import QuiverIOManager

DAYS = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-04")


def build_graph():
    @asset(partitions_def=DAYS, metadata={"partition_expr": "day"})
    def events(context) -> pa.Table:
        day = context.partition_key
        return pa.table({"day": [day] * 3, "value": [1, 2, 3]})

    @asset(ins={"events": AssetIn(partition_mapping=AllPartitionMapping())})
    def daily_totals(events: pd.DataFrame) -> pd.DataFrame:
        return events.groupby("day", as_index=False)["value"].sum()

    @asset(ins={"events": AssetIn(partition_mapping=AllPartitionMapping(), metadata={"columns": ["value"]})})
    def value_count(events: pa.Table) -> pa.Table:
        assert events.column_names == ["value"]
        return pa.table({"n": [events.num_rows]})

    return events, daily_totals, value_count


@pytest.mark.parametrize("target", ["parquet", "duckdb"])
def test_partitioned_graph_materializes_and_loads(server, target):
    events, daily_totals, value_count = build_graph()
    io_manager = QuiverIOManager(location=server.uri, target=target)
    for day in ["2024-01-01", "2024-01-02", "2024-01-03"]:
        result = materialize([events], partition_key=day, resources={"io_manager": io_manager})
        assert result.success
    # A re-run of one partition replaces only that partition.
    assert materialize([events], partition_key="2024-01-02", resources={"io_manager": io_manager}).success

    result = materialize(
        [events, daily_totals, value_count],
        selection=[daily_totals, value_count],
        resources={"io_manager": io_manager},
    )
    assert result.success
    with quiver_flight.Client(server.uri) as c:
        totals = c.get("daily_totals", target=target).to_pandas().sort_values("day")
        assert totals["day"].tolist() == ["2024-01-01", "2024-01-02", "2024-01-03"]
        assert totals["value"].tolist() == [6, 6, 6]
        assert c.get("value_count", target=target).column("n").to_pylist() == [9]
        info = {a.asset: a for a in c.list(target=target)}
        assert info["events"].partition_keys == ["2024-01-01", "2024-01-02", "2024-01-03"]
        assert info["events"].rows == 9

    materializations = result.asset_materializations_for_node("daily_totals")
    metadata = materializations[0].metadata
    assert metadata["rows"].value == 3
    assert [c.name for c in metadata["dagster/column_schema"].value.columns] == ["day", "value"]


def test_multi_partitions_and_upsert_metadata(server):
    regions = MultiPartitionsDefinition(
        {"date": StaticPartitionsDefinition(["2024-01-01"]), "region": StaticPartitionsDefinition(["eu", "us"])}
    )

    @asset(
        partitions_def=regions,
        metadata={"partition_expr": {"date": "date", "region": "region"}, "quiver/target": "duckdb"},
    )
    def sales(context) -> pd.DataFrame:
        key = context.partition_key.keys_by_dimension
        return pd.DataFrame({"date": [key["date"]], "region": [key["region"]], "amount": [10]})

    @asset(metadata={"quiver/target": "duckdb", "quiver/mode": "upsert", "quiver/key": ["id"]})
    def customers() -> pa.Table:
        return pa.table({"id": [1, 2], "name": ["a", "b"]})

    io_manager = QuiverIOManager(location=server.uri)
    for region in ["eu", "us"]:
        key = MultiPartitionKey({"date": "2024-01-01", "region": region})
        assert materialize([sales], partition_key=key, resources={"io_manager": io_manager}).success
    assert materialize([customers], resources={"io_manager": io_manager}).success
    assert materialize([customers], resources={"io_manager": io_manager}).success
    with quiver_flight.Client(server.uri) as c:
        assert sorted(c.get("sales", target="duckdb").column("region").to_pylist()) == ["eu", "us"]
        eu = c.get("sales", target="duckdb", partition={"date": "2024-01-01", "region": "eu"})
        assert eu.column("region").to_pylist() == ["eu"]
        assert c.get("customers", target="duckdb").num_rows == 2, "upsert does not duplicate rows"
