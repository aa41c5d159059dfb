"""The shared vocabulary at the bottom of Portcullis.

Owns what every face speaks: request time budgets (``deadline``), violations, check results,
modes and verdicts (``decision``), and pod specs found in workload kinds (``workloads``).
May import only the standard library and ``webhook.errors``; every other package may import it,
so admission, CI checks, background scans and replay are peers over one vocabulary.
"""
