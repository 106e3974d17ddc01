"""Processors: stages between the receiver and the exporters (filter, sampler, batch)."""
