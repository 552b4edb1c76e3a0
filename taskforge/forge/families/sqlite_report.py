"""SQLite family: answer questions about a database with SQL, write CSV reports, create views."""

from __future__ import annotations

import random

from taskforge.forge import pools
from taskforge.forge.base import Draft, Family
from taskforge.forge.common import bullets, pick, test_module

STAGE_SQL = "/tmp/forge-stage/init.sql"

SQLITE_TEST = """
import sqlite3


def test_report():
    check_csv_table(EXPECTED["path"], EXPECTED["header"], EXPECTED["rows"], set(EXPECTED["numeric"]), ordered=True)
    check_rounded_cells(EXPECTED["path"], EXPECTED["rounded"])


def test_view():
    if not EXPECTED["view"]:
        assert EXPECTED["rows"] is not None
        return
    con = sqlite3.connect(f"file:{EXPECTED['db']}?mode=ro", uri=True)
    try:
        kind = con.execute("SELECT type FROM sqlite_master WHERE name = ?", (EXPECTED["view"],)).fetchone()
        assert kind and kind[0] == "view", f"{EXPECTED['view']} is not a view in {EXPECTED['db']}"
        rows = con.execute(EXPECTED["view_query"]).fetchall()
    finally:
        con.close()
    want = EXPECTED["view_rows"]
    assert len(rows) == len(want), f"the view has {len(rows)} rows, expected {len(want)}"
    for got, exp in zip(rows, want):
        for g, w in zip(got, exp):
            if isinstance(w, float):
                assert g is not None and abs(float(g) - w) <= 0.011, f"view row {got} != {exp}"
                assert is_rounded(g), f"view row {got}: {g!r} is not rounded to 2 decimals"
            else:
                assert g == w, f"view row {got} != {exp}"
"""


def _sql_value(v) -> str:
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)


def _inserts(table: str, rows: list[dict]) -> str:
    cols = list(rows[0])
    return "".join(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(_sql_value(r[c]) for c in cols)});\n" for r in rows
    )


class SqliteReport(Family):
    name = "sqlite_report"
    domain = "development_tooling"
    summary = "query a SQLite database (aggregates, joins, HAVING, date filters) into CSV; create views"

    def build(self, rng: random.Random, difficulty: str) -> Draft:
        theme = rng.choice(["shop", "hr"])
        app = rng.choice(pools.APPS)
        db = rng.choice([f"/home/user/{app}.db", f"/srv/data/{app}.sqlite", f"/var/lib/{app}/{app}.db"])
        out = f"{rng.choice(pools.OUT_DIRS)}/{app}_{rng.choice(['query', 'report', 'result'])}.csv"
        view = None
        view_query = view_rows = None
        if theme == "shop":
            categories = pick(rng, pools.CATEGORIES, rng.randint(3, 5))
            countries = pick(rng, pools.COUNTRIES, rng.randint(3, 5))
            products = [
                {
                    "id": i + 1,
                    "name": f"{rng.choice(pools.PRODUCTS)}-{i + 1}",
                    "category": rng.choice(categories),
                    "price": round(rng.uniform(2, 300), 2),
                }
                for i in range(rng.randint(6, 12))
            ]
            while not _has_long_average(products, "category", "price"):  # so that rounding shows
                shared = next(p for p in products if sum(q["category"] == p["category"] for q in products) > 1)
                shared["price"] = round(shared["price"] + 0.01, 2)
            customers = [
                {
                    "id": i + 1,
                    "name": f"{_person(rng)} {i + 1}",
                    "country": rng.choice(countries),
                }
                for i in range(rng.randint(6, 10))
            ]
            orders, items = [], []
            for oid in range(1, rng.randint(20, 40)):
                orders.append(
                    {
                        "id": oid,
                        "customer_id": rng.choice(customers)["id"],
                        "order_date": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                        "status": rng.choice(["shipped", "shipped", "pending", "cancelled"]),
                    }
                )
                for p in rng.sample(products, rng.randint(1, 3)):
                    items.append(
                        {
                            "order_id": oid,
                            "product_id": p["id"],
                            "quantity": rng.randint(1, 6),
                            "unit_price": p["price"],
                        }
                    )
            # a customer without orders, so the view's "0 when none" is checked
            customers.append(
                {
                    "id": len(customers) + 1,
                    "name": f"{_person(rng)} {len(customers) + 1}",
                    "country": rng.choice(countries),
                }
            )
            schema = (
                "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL);\n"
                "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, country TEXT);\n"
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), "
                "order_date TEXT, status TEXT);\n"
                "CREATE TABLE order_items (order_id INTEGER REFERENCES orders(id), product_id INTEGER REFERENCES "
                "products(id), quantity INTEGER, unit_price REAL);\n"
            )
            sql = (
                schema
                + _inserts("products", products)
                + _inserts("customers", customers)
                + _inserts("orders", orders)
                + _inserts("order_items", items)
            )
            tables = (
                "`products`, `customers`, `orders` (with `order_date` as `YYYY-MM-DD` and a `status`) and "
                "`order_items` (`quantity`, `unit_price` per order line)"
            )
            order_total = {
                o["id"]: sum(i["quantity"] * i["unit_price"] for i in items if i["order_id"] == o["id"]) for o in orders
            }
            if difficulty == "easy":
                rounded = ["avg_price"]
                header = ["category", "products", "avg_price"]
                rows = []
                for cat in sorted({p["category"] for p in products}):
                    ps = [p["price"] for p in products if p["category"] == cat]
                    rows.append([cat, len(ps), round(sum(ps) / len(ps), 2)])
                question = (
                    "one row per product category: the number of products and their average `price` "
                    "(rounded to 2 decimals), sorted by category"
                )
                query = (
                    "SELECT category, COUNT(*) AS products, ROUND(AVG(price), 2) AS avg_price FROM products "
                    "GROUP BY category ORDER BY category;"
                )
                numeric = ["products", "avg_price"]
            elif difficulty == "medium":
                rounded = ["revenue"]
                status = rng.choice(["shipped", "pending"])
                if not any(o["status"] == status for o in orders):
                    status = "shipped" if status == "pending" else "pending"
                header = ["country", "orders", "revenue"]
                agg: dict[str, list] = {}
                for o in orders:
                    if o["status"] != status:
                        continue
                    c = next(c for c in customers if c["id"] == o["customer_id"])["country"]
                    slot = agg.setdefault(c, [0, 0.0])
                    slot[0] += 1
                    slot[1] += order_total[o["id"]]
                rows = sorted(([c, n, round(r, 2)] for c, (n, r) in agg.items()), key=lambda r: (-r[2], r[0]))
                question = (
                    f"one row per customer country with `{status}` orders: the number of such orders and their revenue "
                    "(sum of `quantity * unit_price` over their lines, rounded to 2 decimals), "
                    "highest revenue first, ties by country"
                )
                query = (
                    "SELECT c.country, COUNT(DISTINCT o.id) AS orders, ROUND(SUM(i.quantity * i.unit_price), 2) "
                    "AS revenue "
                    "FROM orders o JOIN customers c ON c.id = o.customer_id JOIN order_items i "
                    f"ON i.order_id = o.id WHERE o.status = '{status}' "
                    "GROUP BY c.country ORDER BY revenue DESC, c.country;"
                )
                numeric = ["orders", "revenue"]
            else:
                rounded = ["revenue"]
                top = rng.randint(3, 5)
                header = ["customer", "orders", "revenue"]
                for attempt in range(31):  # a window and threshold that leave at least two customers
                    lo, hi = sorted(rng.sample(range(1, 13), 2)) if attempt < 30 else (1, 12)
                    min_orders = rng.choice([1, 2]) if attempt < 30 else 1
                    agg = {}
                    for o in orders:
                        month = int(o["order_date"][5:7])
                        if o["status"] != "shipped" or not (lo <= month <= hi):
                            continue
                        name = next(c for c in customers if c["id"] == o["customer_id"])["name"]
                        slot = agg.setdefault(name, [0, 0.0])
                        slot[0] += 1
                        slot[1] += order_total[o["id"]]
                    ranked = sorted(
                        ([c, n, round(r, 2)] for c, (n, r) in agg.items() if n >= min_orders),
                        key=lambda r: (-r[2], r[0]),
                    )
                    if len(ranked) >= 2:
                        break
                rows = ranked[:top]
                question = (
                    f"the top {top} customers (by `name`) by revenue from `shipped` orders dated from 2024-{lo:02d}-01 "
                    f"through the end of 2024-{hi:02d}, counting only customers with at least {min_orders} such "
                    f"order{'s' if min_orders > 1 else ''}: "
                    "the number of those orders and their revenue (sum of `quantity * unit_price`, "
                    "rounded to 2 decimals), highest revenue first, ties by name"
                )
                query = (
                    "SELECT c.name AS customer, COUNT(DISTINCT o.id) AS orders, "
                    "ROUND(SUM(i.quantity * i.unit_price), 2) AS revenue "
                    "FROM orders o JOIN customers c ON c.id = o.customer_id JOIN order_items i ON i.order_id = o.id "
                    f"WHERE o.status = 'shipped' AND o.order_date BETWEEN '2024-{lo:02d}-01' AND '2024-{hi:02d}-31' "
                    f"GROUP BY c.id HAVING COUNT(DISTINCT o.id) >= {min_orders} "
                    f"ORDER BY revenue DESC, customer LIMIT {top};"
                )
                numeric = ["orders", "revenue"]
                view = rng.choice(["customer_revenue", "shipped_revenue", "revenue_by_customer"])
                view_sql = (
                    f"CREATE VIEW {view} AS SELECT c.id AS customer_id, c.name AS name, "
                    "ROUND(COALESCE(SUM(i.quantity * i.unit_price), 0), 2) AS revenue "
                    "FROM customers c LEFT JOIN orders o ON o.customer_id = c.id AND o.status = 'shipped' "
                    "LEFT JOIN order_items i ON i.order_id = o.id GROUP BY c.id;"
                )
                view_query = f"SELECT customer_id, name, revenue FROM {view} ORDER BY customer_id"
                view_rows = []
                for c in customers:
                    total = sum(
                        order_total[o["id"]] for o in orders if o["customer_id"] == c["id"] and o["status"] == "shipped"
                    )
                    view_rows.append([c["id"], c["name"], float(round(total, 2))])
        else:
            departments = [
                {"id": i + 1, "name": d}
                for i, d in enumerate(
                    pick(rng, ["engineering", "sales", "support", "finance", "marketing", "legal"], rng.randint(3, 5))
                )
            ]
            salaries = rng.sample(range(30_000, 150_000, 500), rng.randint(10, 18))
            employees = [
                {
                    "id": i + 1,
                    "name": f"{rng.choice(pools.PEOPLE).capitalize()} {rng.choice(pools.SURNAMES)} {i + 1}",
                    "department_id": rng.choice(departments)["id"],
                    "salary": s,
                    "hired_on": f"{rng.randint(2015, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                    "active": rng.choice([1, 1, 1, 0]),
                }
                for i, s in enumerate(salaries)
            ]
            for e in employees[:2]:  # one department with two active people, so every question has rows
                e.update(department_id=departments[0]["id"], active=1)
            # and an inactive best-paid person in it, so leaving out inactive employees matters
            employees[2].update(department_id=departments[0]["id"], active=0, salary=max(salaries) + 500)
            sql = (
                "CREATE TABLE departments (id INTEGER PRIMARY KEY, name TEXT);\n"
                "CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT, department_id INTEGER REFERENCES "
                "departments(id), salary INTEGER, hired_on TEXT, active INTEGER);\n"
                + _inserts("departments", departments)
                + _inserts("employees", employees)
            )
            tables = "`departments` and `employees` (`salary`, `hired_on` as `YYYY-MM-DD`, `active` 1 or 0)"
            dept_name = {d["id"]: d["name"] for d in departments}
            active = [e for e in employees if e["active"]]
            rounded = ["avg_salary"] if difficulty == "easy" else []
            if difficulty == "easy":
                header = ["department", "employees", "avg_salary"]
                rows = []
                for d in sorted(departments, key=lambda d: d["name"]):
                    s = [e["salary"] for e in active if e["department_id"] == d["id"]]
                    if s:
                        rows.append([d["name"], len(s), round(sum(s) / len(s), 2)])
                question = (
                    "one row per department (by name) with active employees: how many active employees it has and "
                    "their average `salary` (rounded to 2 decimals), sorted by department name"
                )
                query = (
                    "SELECT d.name AS department, COUNT(*) AS employees, ROUND(AVG(e.salary), 2) AS avg_salary "
                    "FROM employees e JOIN departments d ON d.id = e.department_id WHERE e.active = 1 "
                    "GROUP BY d.id ORDER BY d.name;"
                )
                numeric = ["employees", "avg_salary"]
            elif difficulty == "medium":
                header = ["name", "department", "salary"]
                avg = {}
                for d in departments:
                    s = [e["salary"] for e in active if e["department_id"] == d["id"]]
                    if s:
                        avg[d["id"]] = sum(s) / len(s)
                rows = sorted(
                    (
                        [e["name"], dept_name[e["department_id"]], e["salary"]]
                        for e in active
                        if e["salary"] > avg[e["department_id"]]
                    ),
                    key=lambda r: (-r[2], r[0]),
                )
                question = (
                    "the active employees who earn more than the average salary of the active employees of their "
                    "department: name, department name and salary, highest salary first"
                )
                query = (
                    "SELECT e.name, d.name AS department, e.salary FROM employees e "
                    "JOIN departments d ON d.id = e.department_id "
                    "WHERE e.active = 1 AND e.salary > (SELECT AVG(x.salary) FROM employees x WHERE x.department_id = "
                    "e.department_id AND x.active = 1) "
                    "ORDER BY e.salary DESC, e.name;"
                )
                numeric = ["salary"]
            else:
                year = rng.randint(2018, 2023)
                header = ["department", "top_earner", "top_salary", "hired_since"]
                rows = []
                for d in sorted(departments, key=lambda d: d["name"]):
                    staff = [e for e in active if e["department_id"] == d["id"]]
                    if not staff:
                        continue
                    best = max(staff, key=lambda e: e["salary"])
                    since = sum(1 for e in staff if e["hired_on"] >= f"{year}-01-01")
                    rows.append([d["name"], best["name"], best["salary"], since])
                question = (
                    "one row per department with active employees (sorted by department name): "
                    "the name and salary of its best-paid active employee, "
                    f"and how many of its active employees were hired on or after {year}-01-01"
                )
                query = (
                    "SELECT d.name AS department, (SELECT e.name FROM employees e WHERE e.department_id = d.id AND "
                    "e.active = 1 ORDER BY e.salary DESC LIMIT 1) AS top_earner, "
                    "(SELECT MAX(e.salary) FROM employees e WHERE e.department_id = d.id AND e.active = 1) "
                    "AS top_salary, "
                    "(SELECT COUNT(*) FROM employees e WHERE e.department_id = d.id AND e.active = 1 AND e.hired_on >= "
                    f"'{year}-01-01') AS hired_since "
                    "FROM departments d WHERE EXISTS (SELECT 1 FROM employees e WHERE e.department_id = d.id AND "
                    "e.active = 1) ORDER BY d.name;"
                )
                numeric = ["top_salary", "hired_since"]
                view = rng.choice(["department_payroll", "payroll_by_department", "dept_payroll"])
                view_sql = (
                    f"CREATE VIEW {view} AS SELECT d.name AS department, COUNT(e.id) AS headcount, "
                    "COALESCE(SUM(e.salary), 0) AS payroll "
                    "FROM departments d LEFT JOIN employees e ON e.department_id = d.id AND e.active = 1 GROUP BY d.id;"
                )
                view_query = f"SELECT department, headcount, payroll FROM {view} ORDER BY department"
                view_rows = sorted(
                    [
                        [
                            d["name"],
                            sum(1 for e in active if e["department_id"] == d["id"]),
                            sum(e["salary"] for e in active if e["department_id"] == d["id"]),
                        ]
                        for d in departments
                    ]
                )
        lines = [f"`{out}`: a CSV with the header `{','.join(header)}` and {question}"]
        if view:
            cols = (
                (
                    "`customer_id`, `name`, `revenue` (one row per customer: revenue from its `shipped` orders, "
                    "0 when none, rounded to 2 decimals)"
                )
                if theme == "shop"
                else (
                    "`department`, `headcount`, `payroll` (one row per department: number of active employees and the "
                    "sum of their salaries, 0 when none)"
                )
            )
            lines.append(f"also create in the database a view named `{view}` with the columns {cols}")
        instruction = f"The SQLite database `{db}` has the tables {tables}.\n\nWrite:\n{bullets(lines)}\n"
        # sqlite3 -header prints no header for an empty result, so the header is written here

        def report(sql: str, with_header: bool = True, view_sql: str | None = view_sql if view else None) -> str:
            script = f"mkdir -p {out.rsplit('/', 1)[0]}\n"
            if with_header:
                script += f"{{ echo '{','.join(header)}'; sqlite3 -csv {db} \"{sql}\"; }} > {out}\n"
            else:
                script += f'sqlite3 -csv {db} "{sql}" > {out}\n'
            return script + (f'sqlite3 {db} "{view_sql}"\n' if view_sql else "")

        solution = report(query)
        near_misses = {"no_header": report(query, with_header=False)}
        if theme == "hr":
            near_misses["ignores_active"] = report(_without_active_filter(query))
        elif difficulty == "easy":
            near_misses["unrounded"] = report(query.replace("ROUND(AVG(price), 2)", "AVG(price)"))
        elif difficulty == "medium":
            near_misses["ignores_status"] = report(query.replace(f"WHERE o.status = '{status}' ", ""))
        if view:
            near_misses["no_view"] = report(query, view_sql=None)
        if view and theme == "shop":
            near_misses["view_drops_customers_without_orders"] = report(
                query, view_sql=view_sql.replace("FROM customers c LEFT JOIN", "FROM customers c JOIN")
            )
        setup = [f"mkdir -p {db.rsplit('/', 1)[0]}", f"sqlite3 {db} < {STAGE_SQL}", "rm -rf /tmp/forge-stage"]
        expected = {
            "path": out,
            "header": header,
            "rows": rows,
            "numeric": numeric,
            "db": db,
            "view": view,
            "view_query": view_query,
            "view_rows": view_rows,
            "rounded": rounded,
        }
        tests = test_module(self.name, expected, SQLITE_TEST, helpers=("csv", "rounded"))
        return Draft(
            instruction=instruction,
            tests=tests,
            solution=solution,
            outputs=[out] + ([db] if view else []),
            files={STAGE_SQL: sql},
            setup=setup,
            extra={"theme": theme},
            near_misses=near_misses,
        )


def _person(rng: random.Random) -> str:
    return f"{rng.choice(pools.PEOPLE).capitalize()} {rng.choice(pools.SURNAMES)}"


def _has_long_average(rows: list[dict], group: str, value: str) -> bool:
    """Whether some group's average has more than 2 decimals (so an unrounded report differs)."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        groups.setdefault(row[group], []).append(row[value])
    return any(abs(round(sum(v) / len(v), 2) - sum(v) / len(v)) > 1e-6 for v in groups.values())


def _without_active_filter(query: str) -> str:
    """The query with its `active = 1` conditions dropped (a near-miss that counts inactive employees)."""
    bent = query
    for old, new in (
        ("WHERE e.active = 1 AND ", "WHERE "),
        (" WHERE e.active = 1", ""),
        (" AND x.active = 1", ""),
        (" AND e.active = 1", ""),
    ):
        bent = bent.replace(old, new)
    if bent == query:
        raise AssertionError(f"no active filter in {query!r}")
    return bent
