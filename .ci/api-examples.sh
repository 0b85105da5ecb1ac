#!/usr/bin/env bash
# The curl, Python (requests) and Node (fetch) examples of docs/api.md, run
# against a real node on the embedded broker (see .ci/api_examples.py).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${GATEWAY_BIN:-$PWD/target/debug/gateway}"
[ -x "$bin" ] || { echo "no gateway binary at $bin (cargo build first)" >&2; exit 1; }
venv=target/api-examples/venv
if ! "$venv/bin/python" -c 'import requests' 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "requests==2.32.3"
fi
python3 .ci/api_examples.py "$bin" "$venv/bin/python"
