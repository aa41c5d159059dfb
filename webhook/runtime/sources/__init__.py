"""Event sources for the monitor: ``ebpf`` (bpftrace on this kernel), ``jsonl`` and ``tetragon``
(exported streams). Each yields decoded events; none knows about rules."""
