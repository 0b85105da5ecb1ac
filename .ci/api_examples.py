#!/usr/bin/env python3
"""Runs the backend examples of docs/api.md against a real node, so they cannot rot.

Every fenced block whose info string is `sh example`, `python example` or
`js example` is written to a file and run (bash with `set -euo pipefail`,
the Python of a venv with `requests`, Node with its built-in fetch), with
GATEWAY (the node's URL) and KEY (its API key) in the environment. A block
passes when it exits 0; the examples check their own answers.

Usage: api_examples.py GATEWAY_BIN PYTHON
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

RUNNERS = {"sh": ("sh", ["bash", "-euo", "pipefail"]), "python": ("py", None), "js": ("mjs", ["node"])}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def blocks(markdown):
    for match in re.finditer(r"^```(sh|python|js) example\n(.*?)^```$", markdown, re.M | re.S):
        line = markdown.count("\n", 0, match.start()) + 1
        yield match.group(1), match.group(2), line


def main():
    gateway_bin, python = sys.argv[1], sys.argv[2]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "api.md")) as f:
        found = list(blocks(f.read()))
    kinds = {kind for kind, _, _ in found}
    if kinds != set(RUNNERS):
        sys.exit(f"docs/api.md must hold `sh example`, `python example` and `js example` blocks; found {sorted(kinds)}")
    work = tempfile.mkdtemp()
    config = os.path.join(work, "gateway.toml")
    with open(config, "w") as f:
        f.write("[namespaces.room]\npresence = true\njoin_leave = true\n")
    port, key = free_port(), "examples-api-key"
    log = open(os.path.join(work, "gateway.log"), "w")
    node = subprocess.Popen(
        [gateway_bin, "--listen", f"127.0.0.1:{port}", "--node-id", "examples", "--api-key", key,
         "--config", config, "--log-level", "warn"],
        stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if urllib.request.urlopen(url + "/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit("the gateway did not become ready")
        env = dict(os.environ, GATEWAY=url, KEY=key)
        failed = 0
        for n, (kind, code, line) in enumerate(found):
            suffix, command = RUNNERS[kind]
            path = os.path.join(work, f"example{n}.{suffix}")
            with open(path, "w") as f:
                f.write(code)
            command = (command or [python]) + [path]
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
            status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
            print(f"docs/api.md:{line} {kind} example: {status}")
            if result.returncode != 0:
                failed += 1
                print(result.stdout[-2000:], result.stderr[-2000:], sep="\n")
        if failed:
            sys.exit(f"{failed} example(s) failed")
    finally:
        node.terminate()
        node.wait(timeout=30)


if __name__ == "__main__":
    main()
