"""The runtime monitor face: kernel and exported event streams → process/fd state → Falco rules → alerts.

Stages: ``sources`` (bpftrace, JSONL, Tetragon) → ``events`` and ``state`` (process tree, fds,
containers, ``k8s_meta``) → ``engine`` with ``rules`` (the Falco rules language) → ``outputs``,
driven by ``monitor``. May import ``core``, ``config`` and ``audit`` (to record alerts); never
another face (``admission``, ``ci``).
"""
