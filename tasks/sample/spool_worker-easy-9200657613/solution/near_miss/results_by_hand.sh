#!/bin/bash
# Near-miss solution "results_by_hand": right but for one stated requirement it skips or bends.
# `taskforge validate` runs it like the oracle and fails the task if it scores above 0.
set -euo pipefail
for job in /srv/inventory/spool/incoming/*.task; do
  awk -F, '{ n++; t += $2 * $3 } END { printf "lines=%d\ntotal_cents=%d\n", n, t }' "$job" > /srv/inventory/spool/done/$(basename "$job" .task).result
  rm "$job"
done
