"""gotel's pipelines: receivers -> processors (filter, sampler, batch) -> exporters, run by the service."""
