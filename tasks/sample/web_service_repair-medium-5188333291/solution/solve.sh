#!/bin/bash
# Reference solution, run by the oracle agent only (uploaded to /solution, never in the image).
set -euo pipefail
cat /var/log/svc/search-web.log /etc/search/server.ini
sed -i 's|^root = .*|root = /opt/search/public|' /etc/search/server.ini
svc restart search-web
