"""The tamper-evident audit log: C2SP tlog-tiles with signed checkpoints, witnesses, proofs, reports.

Stages: ``records`` (canonical entries) → ``log`` with ``store``/``tiles`` (durable append) →
``merkle``/``note``/``proofs`` (hashing, checkpoints) → ``verify``, ``witness``, ``publish`` →
``report*`` (for security teams). May import only ``core``, ``config`` and ``errors``: the faces
that write to it (admission, runtime) sit above it.
"""
