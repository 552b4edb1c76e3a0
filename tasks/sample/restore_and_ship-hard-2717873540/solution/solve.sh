#!/bin/bash
# Reference solution, run by the oracle agent only (uploaded to /solution, never in the image).
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
{ head -n 1 /srv/data/search/2024-02.csv; for f in /srv/data/search/*.csv; do tail -n +2 "$f"; done; } > /var/reports/all.csv
