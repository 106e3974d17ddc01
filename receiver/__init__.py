"""Everything gotel knows about Go processes: binaries inspected, probes, the ring buffer, the
processes traced and their facts. Knows nothing of pipelines (pipeline/ builds on it)."""
