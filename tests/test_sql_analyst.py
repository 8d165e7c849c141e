"""Analyst queries through POST /sql on a small store built here, with exact expected values.

The store has three tables (users, orders, prices). Every expected row is computed in plain
Python from the same literal data, never through sqlstore or DuckDB.
"""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.client import FeatureStoreClient
from sqlstore.store import FeatureStore, TableDefinition


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


USERS = [
    {"user_id": 1, "name": "ada", "signup_date": date(2020, 1, 5), "country": "UK"},
    {"user_id": 2, "name": "bob", "signup_date": date(2020, 3, 17), "country": "US"},
    {"user_id": 3, "name": "cy", "signup_date": date(2021, 7, 1), "country": "US"},
    {"user_id": 4, "name": "dee", "signup_date": date(2021, 12, 31), "country": "DE"},
]
ORDERS = [
    {
        "order_id": 101,
        "user_id": 1,
        "amount": 20.0,
        "ts": utc(2021, 1, 1, 10),
        "items": ["apple", "pear"],
    },
    {"order_id": 102, "user_id": 1, "amount": 35.5, "ts": utc(2021, 2, 14, 9), "items": ["fig"]},
    {
        "order_id": 103,
        "user_id": 2,
        "amount": 12.25,
        "ts": utc(2021, 1, 20, 12),
        "items": ["apple"],
    },
    {
        "order_id": 104,
        "user_id": 3,
        "amount": 50.0,
        "ts": utc(2021, 3, 3, 8),
        "items": ["pear", "fig", "kiwi"],
    },
    {"order_id": 105, "user_id": 2, "amount": 7.75, "ts": utc(2021, 3, 15, 18), "items": []},
    {"order_id": 106, "user_id": 1, "amount": 15.0, "ts": utc(2021, 3, 20, 7), "items": ["kiwi"]},
    {
        "order_id": 107,
        "user_id": 4,
        "amount": 99.0,
        "ts": utc(2022, 1, 2, 0),
        "items": ["apple", "kiwi"],
    },
]
PRICES = [
    {"product": "apple", "ts": utc(2021, 1, 1), "price": 1.0},
    {"product": "apple", "ts": utc(2021, 2, 1), "price": 1.2},
    {"product": "apple", "ts": utc(2021, 12, 1), "price": 1.5},
    {"product": "fig", "ts": utc(2021, 1, 15), "price": 3.0},
    {"product": "kiwi", "ts": utc(2021, 3, 1), "price": 0.5},
    {"product": "pear", "ts": utc(2020, 12, 1), "price": 2.0},
]


def by_id(orders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(orders, key=lambda order: order["order_id"])


def iso(moment: datetime) -> str:
    return moment.isoformat()


# Expected results, computed from the literal data above.


def expected_totals() -> list[dict[str, Any]]:
    amounts = [order["amount"] for order in ORDERS]
    return [
        {
            "orders": len(amounts),
            "revenue": sum(amounts),
            "smallest": min(amounts),
            "largest": max(amounts),
        }
    ]


def expected_per_user() -> list[dict[str, Any]]:
    counts = Counter(order["user_id"] for order in ORDERS)
    revenue: dict[int, float] = defaultdict(float)
    for order in ORDERS:
        revenue[order["user_id"]] += order["amount"]
    return [
        {"user_id": user, "orders": counts[user], "revenue": revenue[user]}
        for user in sorted(counts)
    ]


def expected_running_totals() -> list[dict[str, Any]]:
    rows = []
    for order in by_id(ORDERS):
        earlier = [
            other["amount"]
            for other in ORDERS
            if other["user_id"] == order["user_id"] and other["ts"] <= order["ts"]
        ]
        rows.append({"order_id": order["order_id"], "running": sum(earlier)})
    return rows


def expected_latest_orders() -> list[dict[str, Any]]:
    latest: dict[int, dict[str, Any]] = {}
    for order in ORDERS:
        current = latest.get(order["user_id"])
        if current is None or order["ts"] > current["ts"]:
            latest[order["user_id"]] = order
    return [{"user_id": user, "order_id": latest[user]["order_id"]} for user in sorted(latest)]


def expected_asof_prices() -> list[dict[str, Any]]:
    rows = []
    for order in by_id(ORDERS):
        if not order["items"]:
            continue
        product = order["items"][0]
        earlier = [p for p in PRICES if p["product"] == product and p["ts"] <= order["ts"]]
        if earlier:
            price = max(earlier, key=lambda p: p["ts"])["price"]
            rows.append({"order_id": order["order_id"], "product": product, "price": price})
    return rows


def expected_pivot() -> list[dict[str, Any]]:
    rows = []
    for country in sorted({user["country"] for user in USERS}):
        years = [user["signup_date"].year for user in USERS if user["country"] == country]
        rows.append({"country": country, "2020": years.count(2020), "2021": years.count(2021)})
    return rows


def expected_item_counts() -> list[dict[str, Any]]:
    counts = Counter(item for order in ORDERS for item in order["items"])
    ordered = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
    return [{"item": item, "orders": count} for item, count in ordered]


def expected_dates() -> list[dict[str, Any]]:
    return [
        {
            "user_id": user["user_id"],
            "days": (date(2022, 1, 1) - user["signup_date"]).days,
            "year_month": user["signup_date"].strftime("%Y/%m"),
            "weekday": user["signup_date"].strftime("%A"),
        }
        for user in USERS
    ]


def expected_months() -> list[dict[str, Any]]:
    counts = Counter(utc(order["ts"].year, order["ts"].month, 1) for order in ORDERS)
    return [{"month": iso(month), "orders": counts[month]} for month in sorted(counts)]


def expected_size_classes() -> list[dict[str, Any]]:
    def size(amount: float) -> str:
        if amount >= 50:
            return "large"
        if amount >= 15:
            return "medium"
        return "small"

    return [
        {
            "order_id": order["order_id"],
            "size": size(order["amount"]),
            "first_item": order["items"][0] if order["items"] else "none",
        }
        for order in by_id(ORDERS)
    ]


def expected_ranks() -> list[dict[str, Any]]:
    ranked = sorted(ORDERS, key=lambda order: -order["amount"])
    rows = []
    for position, order in enumerate(ranked):
        rank = 1 + sum(1 for other in ORDERS if other["amount"] > order["amount"])
        half = 1 if position < 4 else 2  # ntile(2) over 7 rows: 4 rows, then 3
        rows.append({"order_id": order["order_id"], "amount_rank": rank, "half": half})
    return by_id(rows)


def expected_biggest_orders() -> list[dict[str, Any]]:
    biggest: dict[int, dict[str, Any]] = {}
    for order in ORDERS:
        current = biggest.get(order["user_id"])
        if current is None or order["amount"] > current["amount"]:
            biggest[order["user_id"]] = order
    return [{"user_id": user, "biggest": biggest[user]["order_id"]} for user in sorted(biggest)]


def expected_order_lists() -> list[dict[str, Any]]:
    grouped: dict[int, list[int]] = defaultdict(list)
    for order in by_id(ORDERS):
        grouped[order["user_id"]].append(order["order_id"])
    return [
        {"user_id": user, "orders": ",".join(str(order_id) for order_id in grouped[user])}
        for user in sorted(grouped)
    ]


@dataclass(frozen=True)
class AnalystCase:
    """One query and the rows it must return."""

    name: str
    sql: str
    expected: Callable[[], list[dict[str, Any]]]
    params: dict[str, Any] = field(default_factory=dict)


def rows(*values: dict[str, Any]) -> Callable[[], list[dict[str, Any]]]:
    return lambda: list(values)


CASES = [
    AnalystCase(
        "aggregates",
        "SELECT count(*) AS orders, sum(amount) AS revenue, min(amount) AS smallest, "
        "max(amount) AS largest FROM shop.orders",
        expected_totals,
    ),
    AnalystCase(
        "group_by_all",
        "SELECT user_id, count(*) AS orders, sum(amount) AS revenue FROM shop.orders "
        "GROUP BY ALL ORDER BY ALL",
        expected_per_user,
    ),
    AnalystCase(
        "window_running_total",
        "SELECT order_id, sum(amount) OVER (PARTITION BY user_id ORDER BY event_timestamp) "
        "AS running FROM shop.orders ORDER BY order_id",
        expected_running_totals,
    ),
    AnalystCase(
        "qualify_latest_order",
        "SELECT user_id, order_id FROM shop.orders QUALIFY row_number() OVER "
        "(PARTITION BY user_id ORDER BY event_timestamp DESC) = 1 ORDER BY user_id",
        expected_latest_orders,
    ),
    AnalystCase(
        "asof_join_prices",
        """
        WITH first_items AS (
            SELECT order_id, items[1] AS product, event_timestamp
            FROM shop.orders
            WHERE len(items) > 0
        )
        SELECT f.order_id, f.product, p.price
        FROM first_items AS f
        ASOF JOIN shop.prices AS p
            ON f.product = p.product AND f.event_timestamp >= p.event_timestamp
        ORDER BY f.order_id
        """,
        expected_asof_prices,
    ),
    AnalystCase(
        "pivot_statement",
        "SELECT * FROM (PIVOT (SELECT country, year(signup_date) AS signup_year "
        "FROM shop.users) ON signup_year IN (2020, 2021) USING count(*) GROUP BY country) "
        "ORDER BY country",
        expected_pivot,
    ),
    AnalystCase(
        "pivot_standard_syntax",
        "WITH signups AS (SELECT country, year(signup_date) AS signup_year FROM shop.users) "
        "SELECT * FROM signups PIVOT (count(*) FOR signup_year IN (2020, 2021)) "
        "ORDER BY country",
        expected_pivot,
    ),
    AnalystCase(
        "unpivot_columns",
        "SELECT * FROM (UNPIVOT (SELECT user_id, CAST(amount AS DOUBLE) AS amount, "
        "CAST(order_id AS DOUBLE) AS id FROM shop.orders WHERE order_id = 101) "
        "ON amount, id INTO NAME measure VALUE value) ORDER BY measure",
        rows(
            {"user_id": 1, "measure": "amount", "value": 20.0},
            {"user_id": 1, "measure": "id", "value": 101.0},
        ),
    ),
    AnalystCase(
        "from_first",
        "FROM shop.users SELECT name WHERE country = 'US' ORDER BY name",
        rows({"name": "bob"}, {"name": "cy"}),
    ),
    AnalystCase(
        "list_functions",
        "SELECT order_id, len(items) AS n, list_sort(items) AS sorted_items, "
        "list_contains(items, 'kiwi') AS has_kiwi FROM shop.orders ORDER BY order_id",
        lambda: [
            {
                "order_id": order["order_id"],
                "n": len(order["items"]),
                "sorted_items": sorted(order["items"]),
                "has_kiwi": "kiwi" in order["items"],
            }
            for order in by_id(ORDERS)
        ],
    ),
    AnalystCase(
        "unnest_item_counts",
        "SELECT item, count(*) AS orders FROM (SELECT unnest(items) AS item FROM shop.orders) "
        "GROUP BY item ORDER BY orders DESC, item",
        expected_item_counts,
    ),
    AnalystCase(
        "struct_functions",
        "SELECT struct_pack(id := user_id, who := upper(name)) AS person, "
        "{'c': country}.c AS country FROM shop.users WHERE user_id = 1",
        rows({"person": {"id": 1, "who": "ADA"}, "country": "UK"}),
    ),
    AnalystCase(
        "date_functions",
        "SELECT user_id, date_diff('day', signup_date, DATE '2022-01-01') AS days, "
        "strftime(signup_date, '%Y/%m') AS year_month, dayname(signup_date) AS weekday "
        "FROM shop.users ORDER BY user_id",
        expected_dates,
    ),
    AnalystCase(
        "date_trunc_months",
        "SELECT date_trunc('month', event_timestamp) AS month, count(*) AS orders "
        "FROM shop.orders GROUP BY ALL ORDER BY month",
        expected_months,
    ),
    AnalystCase(
        "union_all",
        "SELECT name AS label FROM shop.users WHERE country = 'US' UNION ALL "
        "SELECT product FROM shop.prices WHERE price > 2 ORDER BY label",
        rows({"label": "bob"}, {"label": "cy"}, {"label": "fig"}),
    ),
    AnalystCase(
        "except",
        "SELECT user_id FROM shop.users EXCEPT SELECT user_id FROM shop.orders "
        "WHERE amount > 30 ORDER BY user_id",
        rows({"user_id": 2}),
    ),
    AnalystCase(
        "limit_offset",
        "SELECT order_id FROM shop.orders ORDER BY amount DESC LIMIT 3 OFFSET 1",
        lambda: [
            {"order_id": order["order_id"]}
            for order in sorted(ORDERS, key=lambda order: -order["amount"])[1:4]
        ],
    ),
    AnalystCase(
        "named_parameters",
        "SELECT o.order_id FROM shop.orders AS o JOIN shop.users AS u USING (user_id) "
        "WHERE u.country = $country AND o.amount >= $min_amount ORDER BY o.order_id",
        lambda: [
            {"order_id": order["order_id"]}
            for order in by_id(ORDERS)
            if order["amount"] >= 10
            and next(u for u in USERS if u["user_id"] == order["user_id"])["country"] == "US"
        ],
        params={"country": "US", "min_amount": 10},
    ),
    AnalystCase(
        "string_functions",
        "SELECT upper(name) AS upper_name, concat(name, '@', lower(country)) AS handle, "
        "lpad(CAST(user_id AS VARCHAR), 3, '0') AS code, regexp_matches(name, '^[a-c]') AS early "
        "FROM shop.users ORDER BY user_id",
        lambda: [
            {
                "upper_name": user["name"].upper(),
                "handle": f"{user['name']}@{user['country'].lower()}",
                "code": f"{user['user_id']:03d}",
                "early": user["name"][0] in "abc",
            }
            for user in USERS
        ],
    ),
    AnalystCase(
        "case_and_coalesce",
        "SELECT order_id, CASE WHEN amount >= 50 THEN 'large' WHEN amount >= 15 THEN 'medium' "
        "ELSE 'small' END AS size, coalesce(items[1], 'none') AS first_item "
        "FROM shop.orders ORDER BY order_id",
        expected_size_classes,
    ),
    AnalystCase(
        "median_and_distinct",
        "SELECT median(amount) AS middle, count(DISTINCT user_id) AS buyers FROM shop.orders",
        lambda: [
            {
                "middle": sorted(order["amount"] for order in ORDERS)[len(ORDERS) // 2],
                "buyers": len({order["user_id"] for order in ORDERS}),
            }
        ],
    ),
    AnalystCase(
        "range_table_function",
        "SELECT i, i * i AS square FROM range(4) AS t(i) ORDER BY i",
        lambda: [{"i": i, "square": i * i} for i in range(4)],
    ),
    AnalystCase(
        "generate_series_days",
        "SELECT count(*) AS days FROM generate_series(DATE '2021-01-01', DATE '2021-01-31', "
        "INTERVAL 1 DAY)",
        rows({"days": 31}),
    ),
    AnalystCase(
        "lambda_functions",
        "SELECT order_id, list_transform(items, lambda x: length(x)) AS lengths, "
        "list_filter(items, lambda x: x LIKE '%i%') AS with_i FROM shop.orders "
        "WHERE order_id IN (101, 104) ORDER BY order_id",
        lambda: [
            {
                "order_id": order["order_id"],
                "lengths": [len(item) for item in order["items"]],
                "with_i": [item for item in order["items"] if "i" in item],
            }
            for order in by_id(ORDERS)
            if order["order_id"] in (101, 104)
        ],
    ),
    AnalystCase(
        "exists_subquery",
        "SELECT name FROM shop.users AS u WHERE EXISTS (SELECT 1 FROM shop.orders AS o "
        "WHERE o.user_id = u.user_id AND o.amount > 40) ORDER BY name",
        lambda: [
            {"name": user["name"]}
            for user in sorted(USERS, key=lambda user: user["name"])
            if any(o["user_id"] == user["user_id"] and o["amount"] > 40 for o in ORDERS)
        ],
    ),
    AnalystCase(
        "ordered_string_agg",
        "SELECT user_id, string_agg(CAST(order_id AS VARCHAR), ',' ORDER BY order_id) AS orders "
        "FROM shop.orders GROUP BY user_id ORDER BY user_id",
        expected_order_lists,
    ),
    AnalystCase(
        "lag_window",
        "SELECT order_id, lag(amount) OVER (PARTITION BY user_id ORDER BY event_timestamp) "
        "AS previous FROM shop.orders WHERE user_id = 1 ORDER BY event_timestamp",
        rows(
            {"order_id": 101, "previous": None},
            {"order_id": 102, "previous": 20.0},
            {"order_id": 106, "previous": 35.5},
        ),
    ),
    AnalystCase(
        "rank_and_ntile",
        "SELECT order_id, rank() OVER (ORDER BY amount DESC) AS amount_rank, "
        "ntile(2) OVER (ORDER BY amount DESC) AS half FROM shop.orders ORDER BY order_id",
        expected_ranks,
    ),
    AnalystCase(
        "arg_max",
        "SELECT user_id, arg_max(order_id, amount) AS biggest FROM shop.orders "
        "GROUP BY user_id ORDER BY user_id",
        expected_biggest_orders,
    ),
    AnalystCase(
        "filtered_aggregates",
        "SELECT count(*) FILTER (WHERE amount > 20) AS big, "
        "count(*) FILTER (WHERE len(items) = 0) AS empty FROM shop.orders",
        lambda: [
            {
                "big": sum(1 for order in ORDERS if order["amount"] > 20),
                "empty": sum(1 for order in ORDERS if not order["items"]),
            }
        ],
    ),
    AnalystCase(
        "epoch_seconds",
        "SELECT order_id, epoch(event_timestamp) AS seconds FROM shop.orders WHERE order_id = 101",
        rows({"order_id": 101, "seconds": utc(2021, 1, 1, 10).timestamp()}),
    ),
    AnalystCase(
        "rollup",
        "SELECT country, count(*) AS users FROM shop.users GROUP BY ROLLUP (country) "
        "ORDER BY country NULLS LAST",
        lambda: [
            *(
                {"country": country, "users": count}
                for country, count in sorted(Counter(u["country"] for u in USERS).items())
            ),
            {"country": None, "users": len(USERS)},
        ],
    ),
    AnalystCase(
        "values_join",
        "SELECT v.code, u.name FROM (VALUES ('UK'), ('US')) AS v(code) "
        "JOIN shop.users AS u ON u.country = v.code ORDER BY u.name",
        lambda: [
            {"code": user["country"], "name": user["name"]}
            for user in sorted(USERS, key=lambda user: user["name"])
            if user["country"] in ("UK", "US")
        ],
    ),
    AnalystCase(
        "columns_expression",
        "SELECT COLUMNS('^(user_id|name)$') FROM shop.users ORDER BY user_id LIMIT 2",
        lambda: [{"user_id": u["user_id"], "name": u["name"]} for u in USERS[:2]],
    ),
    AnalystCase(
        "describe_view",
        "SELECT column_name FROM (DESCRIBE shop.users)",
        lambda: [{"column_name": name} for name in USERS[0]],
    ),
    AnalystCase(
        "cte_chain",
        """
        WITH spend AS (
            SELECT user_id, sum(amount) AS total FROM shop.orders GROUP BY user_id
        ),
        ranked AS (
            SELECT u.name, s.total, dense_rank() OVER (ORDER BY s.total DESC) AS position
            FROM spend AS s JOIN shop.users AS u USING (user_id)
        )
        SELECT name, total FROM ranked WHERE position <= 2 ORDER BY position
        """,
        lambda: [
            {
                "name": next(u["name"] for u in USERS if u["user_id"] == row["user_id"]),
                "total": row["revenue"],
            }
            for row in sorted(expected_per_user(), key=lambda row: -row["revenue"])[:2]
        ],
    ),
]


def write_fixture_store(root: Path) -> None:
    """Write the users, orders and prices tables with FeatureStore."""
    store = FeatureStore(root)
    users = pa.Table.from_pylist(USERS)
    orders = pa.table(
        {
            "order_id": [o["order_id"] for o in ORDERS],
            "user_id": [o["user_id"] for o in ORDERS],
            "amount": [o["amount"] for o in ORDERS],
            "event_timestamp": pa.array([o["ts"] for o in ORDERS], pa.timestamp("us", tz="UTC")),
            "items": pa.array([o["items"] for o in ORDERS], pa.list_(pa.string())),
        }
    )
    prices = pa.table(
        {
            "product": [p["product"] for p in PRICES],
            "event_timestamp": pa.array([p["ts"] for p in PRICES], pa.timestamp("us", tz="UTC")),
            "price": [p["price"] for p in PRICES],
        }
    )
    store.write("shop", "users", users, definition=TableDefinition(entity_key=["user_id"]))
    store.write("shop", "orders", orders, definition=TableDefinition(entity_key=["order_id"]))
    store.write("shop", "prices", prices, definition=TableDefinition(entity_key=["product"]))


@pytest.fixture(scope="module")
def shop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("sql_analyst")
    write_fixture_store(folder / "store")
    server = start_server(
        folder / "store", folder / "server.log", env={"SQLSTORE_SQL_WORKERS": "1"}
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def http(shop_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shop_server.base_url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_analyst_query(http: httpx.Client, case: AnalystCase) -> None:
    response = http.post("/sql", json={"sql": case.sql, "params": case.params})

    assert response.status_code == 200, response.text
    assert response.json()["data"] == case.expected()


def test_analyst_cases_cover_requested_count() -> None:
    assert len(CASES) >= 25


def test_metadata_describes_result(http: httpx.Client) -> None:
    sql = "SELECT order_id, amount, event_timestamp, items FROM shop.orders ORDER BY order_id"
    body = http.post("/sql", json={"sql": sql}).json()
    metadata = body["metadata"]

    assert metadata["columns"] == ["order_id", "amount", "event_timestamp", "items"]
    assert metadata["dtypes"]["event_timestamp"].startswith("timestamp[us, tz=")
    assert metadata["dtypes"]["items"] == "list<string>"
    assert metadata["row_count"] == len(ORDERS)
    assert metadata["truncated"] is False
    assert metadata["cached"] is False
    assert metadata["elapsed_ms"] > 0
    assert body["data"][0]["event_timestamp"] == iso(ORDERS[0]["ts"])


def test_limit_truncates_one_past_cap(http: httpx.Client) -> None:
    body = http.post("/sql", json={"sql": "SELECT * FROM range(20) AS t(i)", "limit": 5}).json()

    assert [row["i"] for row in body["data"]] == [0, 1, 2, 3, 4]
    assert body["metadata"]["truncated"] is True
    assert body["metadata"]["truncated_by"] == "row_limit"


def test_limit_equal_to_rows_is_not_truncated(http: httpx.Client) -> None:
    body = http.post("/sql", json={"sql": "SELECT * FROM range(5) AS t(i)", "limit": 5}).json()

    assert body["metadata"]["row_count"] == 5
    assert body["metadata"]["truncated"] is False


def test_limit_above_maximum_is_400(http: httpx.Client) -> None:
    response = http.post("/sql", json={"sql": "SELECT 1", "limit": 10_001})

    assert response.status_code == 400
    assert "maximum 10000" in response.json()["error"]["message"]


def test_get_sql_with_parameters(http: httpx.Client) -> None:
    sql = "SELECT name FROM shop.users WHERE country = $country ORDER BY name"
    response = http.get("/sql", params={"sql": sql, "country": "US", "_limit": 1})

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"name": "bob"}]
    assert response.json()["metadata"]["truncated"] is True


def test_csv_format(http: httpx.Client) -> None:
    sql = "SELECT order_id, items FROM shop.orders WHERE order_id IN (101, 105) ORDER BY 1"
    response = http.post("/sql", json={"sql": sql}, headers={"Accept": "text/csv"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text.splitlines() == [
        '"order_id","items"',
        '101,"[""apple"",""pear""]"',
        '105,"[]"',
    ]
    assert response.headers["x-row-count"] == "2"
    assert response.headers["x-truncated"] == "false"


def test_parquet_format(http: httpx.Client) -> None:
    sql = "SELECT user_id, name FROM shop.users ORDER BY user_id"
    headers = {"Accept": "application/vnd.apache.parquet"}
    response = http.post("/sql", json={"sql": sql}, headers=headers)

    table = pq.read_table(io.BytesIO(response.content))
    assert table.column("name").to_pylist() == [user["name"] for user in USERS]


def test_arrow_format(http: httpx.Client) -> None:
    sql = "SELECT order_id, amount FROM shop.orders ORDER BY order_id"
    headers = {"Accept": "application/vnd.apache.arrow.stream"}
    response = http.post("/sql", json={"sql": sql}, headers=headers)

    table = pa_ipc.open_stream(response.content).read_all()
    assert table.column("amount").to_pylist() == [order["amount"] for order in by_id(ORDERS)]


def test_unsupported_accept_is_406_before_running(http: httpx.Client) -> None:
    response = http.post("/sql", json={"sql": "SELECT 1"}, headers={"Accept": "image/png"})

    assert response.status_code == 406
    assert "Accept" in response.json()["error"]["message"]


def test_types_without_json_form_are_encoded(http: httpx.Client) -> None:
    sql = (
        "SELECT 1.5 AS decimal_value, sum(i) AS huge_sum, INTERVAL '1 day 2 hours' AS span, "
        "MAP {'k': 1} AS mapping, 1 AS a, 2 AS a FROM range(3) AS t(i)"
    )
    body = http.post("/sql", json={"sql": sql}).json()

    assert body["data"] == [
        {
            "decimal_value": 1.5,
            "huge_sum": 3,
            "span": "P1DT2H",
            "mapping": [["k", 1]],
            "a": 1,
            "a_1": 2,
        }
    ]


def test_repeated_name_skips_given_names(http: httpx.Client) -> None:
    sql = "SELECT 1 AS a, 2 AS a, 3 AS a_1, 4 AS a"
    bodies = [http.post("/sql", json={"sql": sql}).json() for _ in range(2)]
    csv = http.post("/sql", json={"sql": sql}, headers={"Accept": "text/csv"})

    for body in bodies:
        assert body["data"] == [{"a": 1, "a_2": 2, "a_1": 3, "a_3": 4}]
        assert body["metadata"]["columns"] == ["a", "a_2", "a_1", "a_3"]
    assert csv.text.splitlines() == ['"a","a_2","a_1","a_3"', "1,2,3,4"]


def test_timetz_bit_varint_come_back_as_text(http: httpx.Client) -> None:
    sql = (
        "SELECT '12:00:00+05'::TIMETZ AS at, '101'::BIT AS bits, 1 AS a, 2 AS a, "
        "['23:30:00-02:30'::TIMETZ] AS times, {'flag': '1'::BIT} AS record, "
        "(2::VARINT ** 100)::VARINT AS big, [5::VARINT] AS bigs"
    )
    bodies = [http.post("/sql", json={"sql": sql}).json() for _ in range(2)]
    csv = http.post("/sql", json={"sql": sql}, headers={"Accept": "text/csv"})

    for body in bodies:
        assert body["data"] == [
            {
                "at": "12:00:00+05",
                "bits": "101",
                "a": 1,
                "a_1": 2,
                "times": "['23:30:00-02:30']",
                "record": "{'flag': 1}",
                "big": str(2**100),
                "bigs": "[5]",
            }
        ]
        assert body["metadata"]["dtypes"]["at"] == "string"
        assert body["metadata"]["dtypes"]["big"] == "string"
        assert body["metadata"]["dtypes"]["a"] == "int32"
    assert csv.text.splitlines()[1].startswith('"12:00:00+05","101",1,2,')


def test_timetz_error_points_into_text(http: httpx.Client) -> None:
    sql = "SELECT '12:00:00+05'::TIMETZ AS at, 'zz'::INTEGER AS n"
    response = http.post("/sql", json={"sql": sql})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "query_failed"
    assert f"LINE 1: {sql}" in response.json()["error"]["message"]


def test_set_advice_replaced(http: httpx.Client) -> None:
    sql = "SELECT list_transform([1, 2], x -> x + 1) AS l"
    message = http.post("/sql", json={"sql": sql}).json()["error"]["message"]

    assert message.startswith("query failed: Binder Error: Deprecated")
    assert "SET " not in message
    assert message.endswith("(settings cannot be changed from a query; change the query)")


def test_depth_limit_names_fix(http: httpx.Client) -> None:
    # DuckDB's own message advises SET max_expression_depth, which a query cannot run.
    sql = "SELECT " + "+".join(["1"] * 2000) + " AS n"
    response = http.post("/sql", json={"sql": sql})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "query_rejected"
    assert response.json()["error"]["message"] == (
        "query is nested more than 1000 levels deep, the most that DuckDB allows; "
        "flatten nested expressions or subqueries"
    )


def test_chained_ctes_too_deep(http: httpx.Client) -> None:
    # The parser accepts the text; DuckDB's binder counts the depth of the chain.
    chain = [f"c{i} AS (SELECT x FROM c{i - 1})" for i in range(1, 2000)]
    sql = f"WITH c0 AS (SELECT 1 AS x), {', '.join(chain)} SELECT x FROM c1999"
    response = http.post("/sql", json={"sql": sql})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "query_rejected"
    assert response.json()["error"]["message"].startswith(
        "query is nested more than 1000 levels deep"
    )


@pytest.mark.parametrize(
    "query_string",
    ["sql=SELECT%20%27%ff%27%20AS%20s", "sql=SELECT%20$v%20AS%20s&v=%c3"],
)
def test_get_sql_query_string_must_be_utf8(http: httpx.Client, query_string: str) -> None:
    response = http.get(f"/sql?{query_string}")

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        "the query string is not UTF-8 once percent-decoded"
    )


def test_get_sql_keeps_encoded_fffd(http: httpx.Client) -> None:
    response = http.get("/sql?sql=SELECT%20%27%ef%bf%bd%27%20AS%20s")

    assert response.status_code == 200
    assert response.json()["data"] == [{"s": "\ufffd"}]


def test_nested_types_in_csv_and_parquet(http: httpx.Client) -> None:
    sql = "SELECT {'x': 1} AS point, INTERVAL 3 HOUR AS span, union_value(k := 2) AS choice"
    csv = http.post("/sql", json={"sql": sql}, headers={"Accept": "text/csv"})
    parquet = http.post(
        "/sql", json={"sql": sql}, headers={"Accept": "application/vnd.apache.parquet"}
    )

    assert csv.status_code == 200
    assert csv.text.splitlines()[1] == '"{""x"":1}","PT3H","2"'
    assert parquet.status_code == 200
    assert pq.read_table(io.BytesIO(parquet.content)).column("span").to_pylist() == ["PT3H"]


def test_failing_query_is_400_with_duckdb_message(http: httpx.Client) -> None:
    response = http.post("/sql", json={"sql": "SELECT no_such_column FROM shop.users"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "query_failed"
    assert "no_such_column" in response.json()["error"]["message"]


def test_parameter_of_wrong_type_is_400(http: httpx.Client) -> None:
    sql = "SELECT * FROM shop.users WHERE user_id = $id"
    response = http.post("/sql", json={"sql": sql, "params": {"id": "not a number"}})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "query_failed"


def test_new_table_is_visible_after_write(shop_server: RunningServer, http: httpx.Client) -> None:
    before = http.post("/sql", json={"sql": "SELECT count(*) AS n FROM shop.users"}).json()
    records = [{"tag_id": 1, "label": "new"}]
    written = http.post("/features/shop/tags", json={"records": records, "entity_key": "tag_id"})
    after = http.post("/sql", json={"sql": "SELECT label FROM shop.tags"})

    assert before["data"] == [{"n": len(USERS)}]
    assert written.status_code == 200, written.text
    assert after.status_code == 200, after.text
    assert after.json()["data"] == [{"label": "new"}]


def test_client_sql_returns_frame(shop_server: RunningServer) -> None:
    sql = "SELECT order_id, event_timestamp FROM shop.orders WHERE order_id = $id"
    with FeatureStoreClient(shop_server.base_url) as client:
        frame = client.sql(sql, params={"id": 104}, as_frame=True)
        body = client.sql("SELECT 42 AS answer")

    assert frame["order_id"].tolist() == [104]
    assert frame["event_timestamp"].tolist()[0].to_pydatetime() == ORDERS[3]["ts"]
    assert body["data"] == [{"answer": 42}]


def test_parameter_arithmetic_without_spaces(http: httpx.Client) -> None:
    sql = "SELECT $n*$n AS square, ($n+1)*$m AS product"
    response = http.post("/sql", json={"sql": sql, "params": {"n": 3, "m": 5}})

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"square": 9, "product": 20}]


def test_nested_literal_too_deep_is_400(http: httpx.Client) -> None:
    sql = "SELECT " + "[" * 70 + "1" + "]" * 70 + " AS x"
    response = http.post("/sql", json={"sql": sql})
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["code"] == "query_rejected"
    assert error["message"] == (
        "list_value builds a value nested 70 levels deep (lists, arrays, structs, maps and "
        "unions inside each other), more than the maximum 62 that a result can hold; nest "
        "fewer levels (line 1, column 8)"
    )


def test_nested_result_too_deep_is_400(http: httpx.Client) -> None:
    chain = [f"c{i} AS (SELECT [x] AS x FROM c{i - 1})" for i in range(1, 71)]
    sql = f"WITH c0 AS (SELECT 1 AS x), {', '.join(chain)} SELECT x FROM c70"
    response = http.post("/sql", json={"sql": sql})
    after = http.post("/sql", json={"sql": "SELECT count(*) AS n FROM shop.users"})
    error = response.json()["error"]

    assert response.status_code == 400
    assert error["code"] == "query_rejected"
    assert error["message"].startswith("a result column is nested more than 62 levels deep")
    assert error["message"].endswith(
        "return fewer levels, for example with unnest(), flatten() or to_json()"
    )
    assert after.json()["data"] == [{"n": len(USERS)}]


ROW_LIMIT_RANGE = "expected a whole number of rows from 0 to 10000 (SQLSTORE_SQL_MAX_ROWS)"


@pytest.mark.parametrize(
    ("limit", "quoted"), [(-1, "-1"), (1.5, "1.5"), ("5", '"5"'), (True, "true")]
)
def test_invalid_limit_names_range(http: httpx.Client, limit: object, quoted: str) -> None:
    response = http.post("/sql", json={"sql": "SELECT 1", "limit": limit})
    error = response.json()["error"]

    assert response.status_code == 422
    assert error["code"] == "validation_error"
    assert error["message"] == (
        f"invalid request: body.limit: {ROW_LIMIT_RANGE}, or null for 10000 (got {quoted})"
    )
    assert error["details"][0]["location"] == "body.limit"


def test_invalid_get_limit_names_range(http: httpx.Client) -> None:
    response = http.get("/sql", params={"sql": "SELECT 1", "_limit": "-1"})
    error = response.json()["error"]

    assert response.status_code == 422
    assert error["code"] == "validation_error"
    assert error["message"] == (
        f'invalid request: query._limit: {ROW_LIMIT_RANGE}; leave out _limit for 10000 (got "-1")'
    )


def test_params_not_object_names_shape(http: httpx.Client) -> None:
    response = http.post("/sql", json={"sql": "SELECT $x AS x", "params": [1]})
    error = response.json()["error"]

    assert response.status_code == 422
    assert error["message"] == (
        'invalid request: body.params: expected an object of parameter values, as {"params": '
        '{"name": value}} (got [1])'
    )


@pytest.mark.parametrize(
    "sql",
    ["SELECT age(TIMESTAMP '2000-01-01') AS a", 'SELECT "current_date" AS d'],
)
def test_clock_dependent_query_is_not_cached(http: httpx.Client, sql: str) -> None:
    headers = {"Accept": "text/csv"}
    responses = [http.post("/sql", json={"sql": sql}, headers=headers) for _ in range(2)]

    assert [response.status_code for response in responses] == [200, 200]
    assert [response.headers["x-cache"] for response in responses] == ["bypass", "bypass"]


def test_age_of_two_timestamps_is_cached(http: httpx.Client) -> None:
    sql = "SELECT age(TIMESTAMP '2001-03-04', TIMESTAMP '2000-01-01') AS a"
    headers = {"Accept": "text/csv"}
    responses = [http.post("/sql", json={"sql": sql}, headers=headers) for _ in range(2)]

    assert [response.status_code for response in responses] == [200, 200]
    assert responses[1].headers["x-cache"] == "hit-memory"
    assert responses[1].text.splitlines() == ['"a"', '"P1Y2M3D"']


def test_get_sql_range_of_text_parameter(http: httpx.Client) -> None:
    sql = "SELECT count(*) AS n FROM range($n)"
    counted = http.get("/sql", params={"sql": sql, "n": "10"})
    unreadable = http.get("/sql", params={"sql": sql, "n": "ten"})

    assert counted.status_code == 200, counted.text
    assert counted.json()["data"] == [{"n": 10}]
    assert unreadable.status_code == 400
    error = unreadable.json()["error"]
    assert error["code"] == "query_rejected"
    assert error["message"] == (
        'cannot bound range(...): parameter $n is text ("ten"), and range takes numbers, or '
        "DATE or TIMESTAMP values with an INTERVAL step; cast it, as $n::BIGINT or $n::DATE or "
        "$n::TIMESTAMP"
    )
    assert error["details"] == [{"construct": "range"}]


@pytest.mark.parametrize("value", [2**128 - 1, -(2**127)])
def test_integer_parameter_at_duckdb_limits_runs(http: httpx.Client, value: int) -> None:
    response = http.post("/sql", json={"sql": "SELECT $n::VARCHAR AS n", "params": {"n": value}})

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"n": str(value)}]


def test_integer_parameter_beyond_duckdb_is_400(http: httpx.Client) -> None:
    body = {"sql": "SELECT $n AS n", "params": {"n": 10**59}}
    response = http.post(
        "/sql", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "query_rejected"
    assert response.json()["error"]["message"] == (
        "invalid value for parameter $n: 100000000000...0000 (60 digits) is outside the "
        "integers DuckDB can bind, -2^127 to 2^128-1 (HUGEINT and UHUGEINT); send a smaller "
        "number, or send it as a string and cast it in the SQL, as $n::DOUBLE or $n::BIGNUM"
    )


def test_session_keyword_is_400(http: httpx.Client) -> None:
    response = http.post("/sql", json={"sql": "SELECT user"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "query_rejected"
    assert response.json()["error"]["message"] == (
        "function user is not allowed because it reads session state; docs/sql.md describes "
        "the functions queries may call. To read a column named user, qualify it with its "
        "table, as t.user: DuckDB calls the function when no column has that name (line 1, "
        "column 8)"
    )
