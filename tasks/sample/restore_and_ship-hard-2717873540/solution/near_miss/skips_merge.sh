#!/bin/bash
# Near-miss solution "skips_merge": right but for one stated requirement it skips or bends.
# `taskforge validate` runs it like the oracle and fails the task if it scores above 0.
set -euo pipefail
gunzip /srv/data/search/*.csv.gz
mkdir -p /var/reports
(cd /srv/data/search && sha256sum -- *) > /var/reports/SHA256SUMS
tar -czf /var/reports/search-bundle.tar.gz -C /srv/data search
python3 - <<'PY'
import csv, glob
groups = {}
for path in sorted(glob.glob("/srv/data/search/*.csv")):
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["status"] == "completed":
                groups.setdefault(row["warehouse"], []).append(float(row["stock"]))
result = {key: round(max(vals), 2) for key, vals in groups.items()}
with open("/var/reports/warehouse_max.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["warehouse", "max_stock"])
    writer.writerows(sorted(result.items(), key=lambda item: item[0]))
PY
