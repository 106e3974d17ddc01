"""The kernel half of gotel: Go binary inspection, BPF probes, ring-buffer reading, targets."""
