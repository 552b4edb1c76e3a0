#!/bin/bash
# Near-miss solution "skips_aggregate": right but for one stated requirement it skips or bends.
# `taskforge validate` runs it like the oracle and fails the task if it scores above 0.
set -euo pipefail
gunzip /srv/data/search/*.csv.gz
mkdir -p /var/reports
(cd /srv/data/search && sha256sum -- *) > /var/reports/SHA256SUMS
tar -czf /var/reports/search-bundle.tar.gz -C /srv/data search
{ head -n 1 /srv/data/search/2024-02.csv; for f in /srv/data/search/*.csv; do tail -n +2 "$f"; done; } > /var/reports/all.csv
