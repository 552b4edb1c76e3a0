#!/bin/bash
# Build-time setup, deleted from the image after it runs.
set -euo pipefail
id -u appsvc >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin -r appsvc
chmod 755 /usr/local/sbin/svc-entrypoint /usr/local/sbin/svc-supervisor /usr/local/bin/svc /etc/svc/search-web/run
mkdir -p /run/svc /var/log/svc
