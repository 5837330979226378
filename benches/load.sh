#!/usr/bin/env bash
# Installs what the load bench drives (wrk, HAProxy 2.6), then runs it.
#   bash benches/load.sh            # HS256 and ES256, 3 rounds of 10 s
#   LOAD_SECONDS=5 LOAD_ROUNDS=1 bash benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in wrk haproxy taskset; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq wrk haproxy util-linux >/dev/null
fi
cargo bench --bench load
