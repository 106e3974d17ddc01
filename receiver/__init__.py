"""Everything gotel knows about Go processes: binaries inspected, probes, the event buffers, the
processes traced and their facts. Knows nothing of pipelines (pipeline/ builds on it)."""
