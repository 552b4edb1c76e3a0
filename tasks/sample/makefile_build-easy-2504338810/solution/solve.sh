#!/bin/bash
# Reference solution, run by the oracle agent only (uploaded to /solution, never in the image).
set -euo pipefail
cat > /home/user/gateway-notes/Makefile <<'FORGE_EOF'
SOURCES := $(sort $(wildcard chapters/*.txt))

dist/bundle.txt: $(SOURCES)
	mkdir -p dist
	cat $(SOURCES) > $@

clean:
	rm -rf dist

.PHONY: clean
FORGE_EOF
