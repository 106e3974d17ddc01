"""The user-space half of gotel: decoder -> filter -> adaptive sampler -> batcher -> exporters."""
