"""gotel's benchmarks: ``make bench`` runs every row (benchmarks/run.py) and writes RESULTS.md."""
