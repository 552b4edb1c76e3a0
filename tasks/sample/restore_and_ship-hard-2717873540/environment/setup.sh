#!/bin/bash
# Build-time setup, deleted from the image after it runs.
set -euo pipefail
gzip -n /srv/data/search/2024-02.csv
gzip -n /srv/data/search/2024-03.csv
gzip -n /srv/data/search/2024-08.csv
gzip -n /srv/data/search/2024-11.csv
