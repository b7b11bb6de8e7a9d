"""The excel target through a real pyarrow Flight client, its workbooks opened the way a
person's tools open them: openpyxl for the look (bold frozen header, autofilter, date formats,
sheets) and pandas.read_excel for the values."""

import datetime as dt
import decimal
import json

import openpyxl
import pandas as pd
import pyarrow as pa
import pyarrow.flight as fl
import pytest

from conftest import Server


@pytest.fixture
def excel(tmp_path):
    config = tmp_path / "quiver.toml"
    config.write_text('[targets.excel]\nkind = "excel"\n')
    srv = Server(tmp_path, args=["--config", str(config)])
    client = fl.connect(srv.uri)
    yield client, tmp_path / "data" / "excel"
    client.close()
    srv.stop()


def put(client, table, asset, chunk=None, **options):
    descriptor = fl.FlightDescriptor.for_command(
        json.dumps({"target": "excel", "asset": asset, "options": options})
    )
    writer, reader = client.do_put(descriptor, table.schema)
    writer.write_table(table, max_chunksize=chunk)
    writer.done_writing()
    meta = reader.read()
    writer.close()  # raises the put's error, if it failed
    return json.loads(meta.to_pybytes())


def get(client, asset):
    return client.do_get(fl.Ticket(json.dumps({"target": "excel", "asset": asset}))).read_all()


SALES = pa.table(
    {
        "id": pa.array([1, 2, 3], pa.int64()),
        "customer": pa.array(["Ada", None, "Grace Hopper"]),
        "paid": pa.array([True, False, None]),
        "amount": pa.array(
            [decimal.Decimal("12.50"), decimal.Decimal("-0.01"), None], pa.decimal128(10, 2)
        ),
        "day": pa.array([dt.date(2024, 1, 2), None, dt.date(1999, 12, 31)], pa.date32()),
        "at": pa.array(
            [dt.datetime(2024, 1, 2, 3, 4, 5), dt.datetime(2024, 1, 2, 3, 4, 5, 678000), None],
            pa.timestamp("ms"),
        ),
        "ratio": pa.array([0.5, None, 1e-3], pa.float64()),
    }
)


def test_a_put_is_a_real_spreadsheet(excel):
    client, root = excel
    result = put(client, SALES, "sales/q1")
    assert result["rows"] == 3
    assert result["location"].endswith("sales/q1.xlsx")

    book = openpyxl.load_workbook(root / "sales" / "q1.xlsx")
    assert book.sheetnames == ["Sheet1"]
    sheet = book["Sheet1"]
    header = [c.value for c in sheet[1]]
    assert header == SALES.column_names
    assert all(c.font.bold for c in sheet[1])
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == "A1:G4"
    assert sheet.max_row == 4
    # Dates and timestamps are Excel dates with a date format, not text.
    assert sheet["E2"].value == dt.datetime(2024, 1, 2)
    assert sheet["E2"].number_format == "yyyy-mm-dd"
    # openpyxl turns the day fraction back into microseconds, within one of the millisecond.
    assert abs(sheet["F3"].value - dt.datetime(2024, 1, 2, 3, 4, 5, 678000)) < dt.timedelta(milliseconds=1)
    assert sheet["F3"].number_format == "yyyy-mm-dd hh:mm:ss.000"
    assert sheet["C2"].value is True
    assert sheet["D2"].value == 12.5
    # Widths follow the data: the name column is wider than the flags.
    assert sheet.column_dimensions["B"].width > sheet.column_dimensions["C"].width

    frame = pd.read_excel(root / "sales" / "q1.xlsx")
    assert list(frame.columns) == SALES.column_names
    assert frame["id"].tolist() == [1, 2, 3]
    assert frame["customer"].tolist()[0::2] == ["Ada", "Grace Hopper"]
    assert pd.isna(frame["customer"][1])
    assert frame["amount"].tolist()[:2] == [12.5, -0.01]
    assert frame["day"][0] == pd.Timestamp("2024-01-02")
    assert abs(frame["at"][1] - pd.Timestamp("2024-01-02 03:04:05.678")) < pd.Timedelta(milliseconds=1)

    # DoGet returns the put's exact Arrow types and values.
    assert get(client, "sales/q1").equals(SALES)


def test_rows_beyond_a_sheet_continue_on_the_next(excel):
    client, root = excel
    table = pa.table({"n": pa.array(range(10), pa.int64())})
    put(client, table, "split", chunk=4, sheet="Numbers", sheet_rows=4, freeze=False)
    book = openpyxl.load_workbook(root / "split.xlsx")
    assert book.sheetnames == ["Numbers", "Numbers (2)", "Numbers (3)"]
    assert [book[s].max_row for s in book.sheetnames] == [5, 5, 3]
    assert all(book[s]["A1"].value == "n" for s in book.sheetnames)
    assert book["Numbers"].freeze_panes is None
    assert book["Numbers (3)"].auto_filter.ref == "A1:A3"
    frames = pd.read_excel(root / "split.xlsx", sheet_name=None)
    assert pd.concat(frames.values())["n"].tolist() == list(range(10))
    assert get(client, "split").equals(table)

    with pytest.raises(pa.ArrowInvalid, match="max_sheets"):
        put(client, table, "capped", sheet_rows=4, max_sheets=2)
    assert not (root / "capped.xlsx").exists()


def test_nested_columns_are_refused_by_name(excel):
    client, root = excel
    table = pa.table({"id": [1], "tags": pa.array([[1, 2]], pa.list_(pa.int64()))})
    with pytest.raises(pa.ArrowInvalid, match="column 'tags' has type List"):
        put(client, table, "nested")
    assert not (root / "nested.xlsx").exists()
