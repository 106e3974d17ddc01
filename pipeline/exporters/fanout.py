"""TraceFanout: the end of a traces pipeline, where span arrays become OTLP requests for exporters.

Encodes a span batch once (``encode.TraceEncoder``), cut into requests under the batch processor's
byte cap, whose real sizes are fed back to the batcher, and hands each request to every exporter of
the pipeline. Exporters never block it (their queues drop and count when full). Exporters are shut
down by the service (they may serve several pipelines), not here.
"""

import logging

from pipeline.exporters.base import Payload
from pipeline.processors import batch
from pipeline.stage import Stage

log = logging.getLogger("gotel.fanout")


class TraceFanout(Stage):
    """Encodes span batches and hands the requests to exporters (see the module docstring)."""

    COUNTERS = ("requests", "encode_errors")

    def __init__(self, encoder, exporters, batcher=None):
        super().__init__(None)
        self.encoder = encoder
        self.exporters = list(exporters)
        self.batcher = batcher
        self.max_bytes = batcher.config.send_batch_max_bytes if batcher is not None \
            else batch.Config().send_batch_max_bytes

    def consume(self, spans):
        self.items_in += len(spans)
        try:
            chunks = self.encoder.encode_chunks(spans, self.max_bytes)
        except Exception:  # noqa: BLE001  (bad data is dropped and counted, never a crash)
            self.encode_errors += len(spans)
            log.exception("could not encode %d spans; dropped", len(spans))
            return
        for data, count in chunks:
            self.requests += 1
            self.items_out += count
            if self.batcher is not None:
                self.batcher.observe_size(count, len(data))
            payload = Payload("traces", data, count)
            for exporter in self.exporters:
                exporter.export(payload)

    def shutdown(self, timeout=5.0):
        pass


class PayloadRoute:
    """The ``next`` of a receiver that emits whole export requests (the goruntime census): hands
    each payload to the exporters of the pipelines of its signal."""

    def __init__(self, routes):
        self.routes = {signal: list(exporters) for signal, exporters in routes.items()}

    def consume(self, payload):
        for exporter in self.routes.get(payload.signal, ()):
            exporter.export(payload)
