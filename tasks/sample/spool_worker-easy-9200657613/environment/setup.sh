#!/bin/bash
# Build-time setup, deleted from the image after it runs.
set -euo pipefail
id -u monitor >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin -r monitor
mkdir -p /srv/inventory/spool/incoming /srv/inventory/spool/done
chown monitor: /srv/inventory/spool/incoming /srv/inventory/spool/done
chmod 755 /usr/local/sbin/svc-entrypoint /usr/local/sbin/svc-supervisor /usr/local/bin/svc /etc/svc/inventory-worker/run
mkdir -p /run/svc /var/log/svc
