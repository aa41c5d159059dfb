"""The crash probe's child process: compile the policies and evaluate them on the probe's samples.

Run as ``python -m webhook.policy.probe_child``; a crash here costs only this process. Kept apart
from ``probe`` so that the parent never imports the engines it guards (no import cycle).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from webhook import errors
from webhook.policy import gatekeeper, modules, rego
from webhook.policy.probe import SAMPLES, sample_document, sample_review


def _main(argv: Sequence[str]) -> int:
    # stderr is this process's error channel (its last line names a crash); the load's warnings
    # are said once, by the parent's own compile of the same sources.
    logging.disable(logging.WARNING)
    kind, strict, *names = argv
    paths = [Path(n) for n in names]
    try:
        if kind == "rego":
            if names == ["-"]:  # the very sources the parent will compile (``probe.check``)
                mods = [modules.parse(name, text) for name, text in json.load(sys.stdin)]
                compiled = rego.compile_modules(mods, strict_builtins=strict == "strict")
            else:
                compiled = rego.load_directory(paths, strict_builtins=strict == "strict")
            print("(compiled)", flush=True)
            for obj in SAMPLES:
                document = sample_document(obj)
                for policy in compiled.policies:
                    print(f"policy {policy.id} ({policy.file})", flush=True)
                    compiled.evaluate_policy(policy, document)
        else:
            if names == ["-"]:  # the very sources the parent will compile (``probe.check``)
                sources = [(name, text) for name, text in json.load(sys.stdin)]
                loaded = gatekeeper.load_sources(sources, strict_builtins=strict == "strict")
            else:
                loaded = gatekeeper.load(paths, strict_builtins=strict == "strict")
            print("(compiled)", flush=True)
            for obj in SAMPLES:
                for constraint in loaded.constraints:
                    print(f"constraint {constraint.id} ({constraint.file})", flush=True)
                    loaded.evaluate_one(constraint, sample_review(obj))
    except errors.PolicyLoadError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
