#!/bin/bash
# Near-miss solution "config_not_reloaded": right but for one stated requirement it skips or bends.
# `taskforge validate` runs it like the oracle and fails the task if it scores above 0.
set -euo pipefail
until [ -s /var/log/svc/search-web.log ]; do sleep 0.2; done
sed -i 's|^root = .*|root = /opt/search/public|' /etc/search/server.ini
