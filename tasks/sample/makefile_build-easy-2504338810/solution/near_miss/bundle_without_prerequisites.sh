#!/bin/bash
# Near-miss solution "bundle_without_prerequisites": right but for one stated requirement it skips or bends.
# `taskforge validate` runs it like the oracle and fails the task if it scores above 0.
set -euo pipefail
cat > /home/user/gateway-notes/Makefile <<'FORGE_EOF'
SOURCES := $(sort $(wildcard chapters/*.txt))

dist/bundle.txt:
	mkdir -p dist
	cat $(SOURCES) > $@

clean:
	rm -rf dist

.PHONY: clean
FORGE_EOF
