"""docs/demo-tables.md against a demo store: each table's columns and types as the Parquet files
store them, and the row counts."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq

from sqlstore.types import describe_type

DOC = Path(__file__).resolve().parent.parent / "docs" / "demo-tables.md"
HEADING = re.compile(r"^## `(?P<reference>[a-z_]+/[a-z_]+)`$")
COLUMN_ROW = re.compile(r"^\| `(?P<column>[a-z0-9_]+)` \| (?P<type>[^|]+?) \| ")
ROWS_LINE = re.compile(r"Rows: (?P<rows>[0-9,]+)\.")


def documented_tables() -> dict[str, dict[str, object]]:
    """Return each documented table's column types and row count, as the doc lists them."""
    tables: dict[str, dict[str, object]] = {}
    current: dict[str, object] | None = None
    for line in DOC.read_text().splitlines():
        heading = HEADING.match(line)
        if heading:
            current = {"columns": {}, "rows": None}
            tables[heading["reference"]] = current
            continue
        if current is None:
            continue
        row = COLUMN_ROW.match(line)
        if row:
            current["columns"][row["column"]] = row["type"]
        rows = ROWS_LINE.search(line)
        if rows:
            current["rows"] = int(rows["rows"].replace(",", ""))
    return tables


def test_doc_lists_stored_types(demo_root: Path) -> None:
    tables = documented_tables()

    stored = sorted(
        path.relative_to(demo_root / "features") for path in demo_root.rglob("*.parquet")
    )
    assert sorted(tables) == [str(path.with_suffix("")) for path in stored]
    for reference, documented in tables.items():
        metadata = pq.read_metadata(demo_root / "features" / f"{reference}.parquet")
        schema = metadata.schema.to_arrow_schema()
        types = {field.name: describe_type(field.type) for field in schema}
        assert documented["columns"] == types, reference
        assert documented["rows"] == metadata.num_rows, reference
