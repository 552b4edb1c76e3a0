"""Closed vocabularies that task parameters are drawn from.

A tiny model trained from scratch learns command shapes and a closed vocabulary, not the copying
of unseen strings (see docs on the machine), so file names, columns, users, apps and patterns
come from these pools; the per-task data (values, counts, sizes, timestamps) is random.
"""

from __future__ import annotations

PEOPLE = [
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "oscar",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "wendy",
]
SURNAMES = [
    "Moreau",
    "Okafor",
    "Schmidt",
    "Tanaka",
    "Silva",
    "Novak",
    "Haddad",
    "Larsen",
    "Kowalski",
    "Reyes",
    "Dubois",
    "Ivanova",
]
SERVICE_ACCOUNTS = [
    "deploy",
    "appsvc",
    "archiver",
    "webapp",
    "etl",
    "monitor",
    "builder",
    "reporter",
]  # none exists in Debian's base image
GROUPS = ["developers", "ops", "analysts", "auditors", "webteam", "dba", "support", "finance"]
APPS = [
    "billing",
    "inventory",
    "webshop",
    "reports",
    "auth",
    "search",
    "metrics",
    "gateway",
    "scheduler",
    "mailer",
    "ledger",
    "catalog",
]
MAIL_DOMAINS = ["example.com", "example.org", "corp.example", "mail.test", "shop.test", "acme.test"]

HOME = "/home/user"
DATA_ROOTS = ["/home/user/data", "/srv/data", "/opt/data", "/var/data"]
OUT_DIRS = ["/home/user/out", "/home/user/reports", "/srv/reports", "/var/reports"]

REGIONS = ["north", "south", "east", "west", "central"]
COUNTRIES = ["de", "fr", "us", "jp", "br", "in", "ng", "ca"]
PRODUCTS = ["widget", "gadget", "sprocket", "gizmo", "doohickey", "bracket", "valve", "sensor"]
TEAMS = ["platform", "payments", "frontend", "data", "security", "mobile"]
WAREHOUSES = ["berlin", "lyon", "austin", "osaka", "lagos", "toronto"]
CATEGORIES = ["tools", "garden", "kitchen", "office", "toys", "sports"]
DEVICES = ["desktop", "mobile", "tablet"]
CHANNELS = ["online", "store", "partner"]
PRIORITIES = ["low", "medium", "high", "urgent"]
LEVELS = ["DEBUG", "INFO", "WARN", "ERROR"]
HTTP_METHODS = ["GET", "POST", "PUT", "DELETE"]
URL_PATHS = [
    "/",
    "/login",
    "/logout",
    "/api/items",
    "/api/orders",
    "/api/users",
    "/static/app.js",
    "/static/style.css",
    "/search",
    "/cart",
    "/checkout",
    "/health",
]
USER_AGENTS = ["Mozilla/5.0", "curl/8.4.0", "python-requests/2.31", "Go-http-client/1.1"]
MONTHS = [
    "2024-01",
    "2024-02",
    "2024-03",
    "2024-04",
    "2024-05",
    "2024-06",
    "2024-07",
    "2024-08",
    "2024-09",
    "2024-10",
    "2024-11",
    "2024-12",
]
