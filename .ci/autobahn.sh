#!/usr/bin/env bash
# RFC 6455 / RFC 7692 conformance: Autobahn|Testsuite's fuzzing client
# (cases 1 to 13) against the gateway's own WebSocket stack, run by the echo
# example (gateway/examples/autobahn_echo.rs). Prints the summary and fails
# on any case that is not OK, NON-STRICT or INFORMATIONAL (UNIMPLEMENTED is
# allowed only for the declined offers listed in docs/protocol.md, none
# today). Autobahn|Testsuite needs Python 2.7 (pyenv's 2.7.18 here).
set -euo pipefail
cd "$(dirname "$0")/.."

work=target/autobahn
mkdir -p "$work"

python2=""
for candidate in "${PYTHON2:-}" "$(pyenv root 2>/dev/null)/versions/2.7.18/bin/python" "$HOME/.pyenv/versions/2.7.18/bin/python" python2.7; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
    python2="$candidate"
    break
  fi
done
if [ -z "$python2" ]; then
  echo "Autobahn|Testsuite needs Python 2.7 and none was found (tried \$PYTHON2, pyenv's 2.7.18, python2.7)." >&2
  echo "Install it (for example: pyenv install 2.7.18) and run .ci/autobahn.sh again." >&2
  exit 1
fi

venv="$work/venv"
if [ ! -x "$venv/bin/wstest" ]; then
  echo "installing autobahntestsuite 25.10.1 into $venv (with $python2)"
  "$python2" -m virtualenv --version >/dev/null 2>&1 || "$python2" -m pip install --quiet 'virtualenv<20.22' 2>&1 | grep -v DEPRECATION || true
  "$python2" -m virtualenv -q "$venv"
  "$venv/bin/pip" install --quiet autobahntestsuite==25.10.1 2>&1 | grep -v DEPRECATION || true
fi
# The installs above hide pip's noise (and with it its exit status): say
# plainly when they did not produce the test client.
if [ ! -x "$venv/bin/wstest" ]; then
  echo "installing autobahntestsuite 25.10.1 did not produce $venv/bin/wstest (pip needs the package registry)." >&2
  rm -rf "$venv"
  exit 1
fi

# Release build: cases 9 and 12-13 move megabytes and thousands of
# compressed messages, which an unoptimised deflate makes slow.
cargo build --release -q -p gateway --example autobahn_echo
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
target/release/examples/autobahn_echo "127.0.0.1:$port" >"$work/echo.log" 2>&1 &
echo_pid=$!
trap 'kill "$echo_pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

rm -rf "$work/report"
cat >"$work/fuzzingclient.json" <<JSON
{"outdir": "$PWD/$work/report",
 "servers": [{"agent": "pubsub-gateway", "url": "ws://127.0.0.1:$port"}],
 "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*", "11.*", "12.*", "13.*"],
 "exclude-cases": [], "exclude-agent-cases": {}}
JSON
started=$(date +%s)
(cd "$work" && "$PWD/venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json >wstest.log 2>&1) || {
  tail -20 "$work/wstest.log"
  echo "wstest failed" >&2
  exit 1
}
echo "Autobahn|Testsuite ran in $(( $(date +%s) - started )) s; report in $work/report/index.html"

python3 - "$work/report/index.json" <<'PY'
import collections, json, sys
results = json.load(open(sys.argv[1]))["pubsub-gateway"]
allowed = {"OK", "NON-STRICT", "INFORMATIONAL"}
# Offers the gateway declines on purpose (docs/protocol.md): none today.
declined = set()
def key(case):
    return [int(part) for part in case.split(".")]
counts = collections.Counter()
bad = []
for case in sorted(results, key=key):
    r = results[case]
    behavior, close = r["behavior"], r["behaviorClose"]
    counts[behavior] += 1
    ok = lambda b: b in allowed or (b == "UNIMPLEMENTED" and case in declined)
    if not (ok(behavior) and ok(close)):
        bad.append("%s: %s (close: %s)" % (case, behavior, close))
    elif behavior != "OK":
        print("  %s: %s" % (case, behavior))
print("%d cases: %s" % (len(results), ", ".join("%s %d" % kv for kv in sorted(counts.items()))))
if bad:
    print("FAILED cases:\n  " + "\n  ".join(bad))
    sys.exit(1)
PY
