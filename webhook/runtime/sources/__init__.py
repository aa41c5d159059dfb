"""Event sources for the monitor: ``ebpf`` (bpftrace on this kernel), ``ringbuf`` (the same
events through a libbpf ring buffer; ``kernel`` chooses between them), ``jsonl`` and ``tetragon``
(exported streams). Each yields decoded events; none knows about rules."""
