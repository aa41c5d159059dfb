"""``portcullis check`` over 10,000 manifests, next to just parsing them with libyaml.

python bench/bench_check.py [--count 10000]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import yaml

from webhook import cli

TEMPLATE = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{i}
  namespace: team-{ns}
  labels: {{app: app-{i}, team: team-{ns}}}
spec:
  replicas: 2
  selector:
    matchLabels: {{app: app-{i}}}
  template:
    metadata:
      labels: {{app: app-{i}}}
    spec:
      securityContext:
        runAsNonRoot: true
        seccompProfile: {{type: RuntimeDefault}}
      containers:
        - name: app
          image: registry.example.com/team-{ns}/app:{i}
          ports: [{{containerPort: 8080}}]
          resources:
            limits: {{cpu: 500m, memory: 256Mi}}
          securityContext:
            allowPrivilegeEscalation: false
            privileged: {privileged}
            capabilities: {{drop: [ALL]}}
        - name: sidecar
          image: registry.example.com/shared/proxy:2.{i}
---
apiVersion: v1
kind: Service
metadata:
  name: app-{i}
  namespace: team-{ns}
spec:
  selector: {{app: app-{i}}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000, help="number of files (each a Deployment + a Service)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="portcullis-bench-check-"))
    for i in range(args.count):
        text = TEMPLATE.format(i=i, ns=i % 50, privileged="true" if i % 10 == 0 else "false")
        (root / f"app-{i:05d}.yaml").write_text(text)
    files = sorted(root.iterdir())
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    t0 = time.perf_counter()
    docs = 0
    for f in files:
        docs += sum(1 for _ in yaml.load_all(f.read_text(), Loader=loader))
    parse_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    sink = io.StringIO()
    with redirect_stdout(sink):
        code = cli.main(["check", str(root), "--format", "json", "--skip", "images"])
    check_s = time.perf_counter() - t0
    print(f"{args.count} files, {docs} documents ({args.count} Deployments with 2 containers each)")
    print(f"libyaml parse only : {parse_s:6.2f} s  ({docs / parse_s:8.0f} docs/s)")
    print(f"portcullis check   : {check_s:6.2f} s  ({docs / check_s:8.0f} docs/s), exit {code}")
    print(f"ratio check/parse  : {check_s / parse_s:.2f}x the time of parsing alone")


if __name__ == "__main__":
    sys.exit(main())
