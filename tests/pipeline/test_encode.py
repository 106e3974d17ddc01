"""TraceEncoder writes the protobuf wire format by hand: protobuf's own parser is the oracle."""


import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

import spanfactory
from pipeline.exporters import encode
from receiver import processes
from pipeline.spans import SPAN_DTYPE, SpanFlag, SpanKind


def attrs(kvs):
    out = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind)
        out[kv.key] = [v.string_value for v in value.values] if kind == "array_value" else value
    return out


def all_spans(request):
    return [(rs, span) for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


def test_every_numeric_field_round_trips_through_protobuf():
    s = spanfactory.spans(3000, seed=1)
    request = spanfactory.encoder().request(s)
    got = {span.span_id: span for _, span in all_spans(request)}
    assert len(got) == len(s)
    for row in s:
        span = got[int(row["span_id"]).to_bytes(8, "big")]
        assert span.trace_id == int(row["trace_hi"]).to_bytes(8, "big") + int(row["trace_lo"]).to_bytes(8, "big")
        parent = int(row["parent_span_id"])
        assert span.parent_span_id == (parent.to_bytes(8, "big") if parent else b"")
        assert (span.start_time_unix_nano, span.end_time_unix_nano) == (row["start_ns"], row["end_ns"])
        assert span.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
        assert span.flags == 0x101
        a = attrs(span.attributes)
        assert a["gotel.goroutine.id"] == row["goid"]
        if row["kind"] == SpanKind.PARK:
            reason = spanfactory.WAIT_REASONS[row["wait_reason"]]
            assert span.name == reason and a["gotel.wait_reason"] == reason
            assert a["gotel.park.blocked_ns"] == row["blocked_ns"]
            assert a["gotel.park.runnable_ns"] == row["runnable_ns"]
        else:
            assert a["gotel.goroutine.parent_id"] == row["parent_goid"]
            assert a["gotel.goroutine.parks"] == row["n_parks"]


def test_goroutine_span_is_named_by_its_start_function_with_the_creation_site():
    s = spanfactory.spans(1, parks=0)
    s["start_pc"], s["create_pc"] = 0x401000, 0x402011   # return address: the call is at +0x10
    (_, span), = all_spans(spanfactory.encoder().request(s))
    a = attrs(span.attributes)
    assert span.name == "main.worker"
    assert a["code.function.name"] == "main.worker"
    assert a["code.file.path"] == "/src/app/main.go"
    assert a["code.line.number"] == 40 + 0x10
    assert a["gotel.goroutine.created_by"] == "main.main"


def test_a_stdlib_wrapper_is_named_after_the_users_creating_function():
    s = spanfactory.spans(2, parks=0)
    s["start_pc"] = 0x403000                      # sync.(*WaitGroup).Go.func1
    s["create_pc"] = [0x402010, 0x404010]         # main.main, net/http (stdlib)
    names = sorted(span.name for _, span in all_spans(spanfactory.encoder().request(s)))
    assert names == ["main.main", "sync.(*WaitGroup).Go.func1"]


def test_stdlib_and_wrapper_rules():
    assert encode.is_stdlib("net/http.(*conn).serve") and encode.is_stdlib("runtime.gcBgMarkWorker")
    assert not encode.is_stdlib("main.worker")
    assert not encode.is_stdlib("github.com/x/y.(*T).Run")
    assert encode.span_name("net/http.(*conn).serve", "net/http.(*Server).Serve") == \
        "net/http.(*conn).serve"
    assert encode.span_name("time.goFunc", "github.com/x/y.Start") == "github.com/x/y.Start"
    assert encode.span_name("runtime.main", "runtime.rt0_go") == "main.main"
    assert encode.span_name("", "") == "goroutine"


def test_unknown_pcs_and_a_failing_symbolizer_still_give_spans():
    def broken(pid, pcs):
        raise RuntimeError("pclntab gone")

    s = spanfactory.spans(5, parks=0)
    s["start_pc"] = 0x999000
    (_, span), *_ = all_spans(spanfactory.encoder(resolver=broken).request(s))
    assert span.name == "0x999000"


def test_flags_become_attributes_and_links():
    s = spanfactory.spans(2, parks=0)
    s["flags"] = [SpanFlag.CONTINUED | SpanFlag.ENDED_AT_SHUTDOWN, SpanFlag.SPLIT]
    s["link_trace_hi"], s["link_trace_lo"], s["link_span_id"] = 7, 8, [9, 10]
    spans = {span.span_id: span for _, span in all_spans(spanfactory.encoder().request(s))}
    first = spans[int(s["span_id"][0]).to_bytes(8, "big")]
    a = attrs(first.attributes)
    assert a["gotel.goroutine.continued"] is True and a["gotel.goroutine.ended_at_shutdown"] is True
    (link,) = first.links
    assert link.trace_id == (7).to_bytes(8, "big") + (8).to_bytes(8, "big")
    assert link.span_id == (9).to_bytes(8, "big")
    second = spans[int(s["span_id"][1]).to_bytes(8, "big")]
    assert attrs(second.attributes)["gotel.trace.split"] is True
    assert second.links[0].span_id == (10).to_bytes(8, "big")


@pytest.mark.parametrize("threshold,expected", [(0, ""), (1 << 55, "ot=th:8"),
                                                (0xFFFFFFFFFFFFFF, "ot=th:ffffffffffffff"),
                                                (0x00C00000000000, "ot=th:00c")])
def test_sampling_threshold_is_written_as_otep_235_tracestate(threshold, expected):
    s = spanfactory.spans(1)
    s["sample_threshold"] = threshold
    (_, span), = all_spans(spanfactory.encoder().request(s))
    assert span.trace_state == expected


def test_parks_as_events_attach_to_their_goroutine_span_or_stay_spans_when_it_is_absent():
    s = spanfactory.spans(3, parks=0)
    s["kind"] = [SpanKind.GOROUTINE, SpanKind.PARK, SpanKind.PARK]
    s["flags"][1:] = SpanFlag.AS_EVENT
    s["parent_span_id"][1] = s["span_id"][0]
    s["parent_span_id"][2] = 12345                          # its goroutine is not in this batch
    s["wait_reason"][1] = 3
    spans = [span for _, span in all_spans(spanfactory.encoder().request(s))]
    assert len(spans) == 2
    goroutine = next(sp for sp in spans if sp.span_id == int(s["span_id"][0]).to_bytes(8, "big"))
    (event,) = goroutine.events
    assert event.name == "chan receive" and event.time_unix_nano == s["start_ns"][1]
    assert attrs(event.attributes)["gotel.park.blocked_ns"] == s["blocked_ns"][1]


def test_one_resource_per_process_with_its_attributes():
    s = spanfactory.spans(200, pids=(100, 200, 300))
    request = spanfactory.encoder().request(s)
    assert len(request.resource_spans) == 3
    for rs in request.resource_spans:
        a = attrs(rs.resource.attributes)
        pid = a["process.pid"]
        assert a["service.name"] == "example.com/app"
        assert a["process.executable.name"] == f"app{pid}"
        assert a["process.executable.path"] == f"/usr/local/bin/app{pid}"
        assert a["process.runtime.name"] == "go" and a["process.runtime.version"] == "go1.25.5"
        assert a["process.creation.time"].endswith("Z")
        assert a["host.name"] == "testhost" and a["telemetry.sdk.name"] == "gotel"
        assert a["go.build.vcs.revision"] == "abc123" and a["go.module.version"] == "(devel)"
        assert len(a["service.instance.id"]) == 36
        assert rs.scope_spans[0].scope.name == "gotel"
        n = sum(len(ss.spans) for ss in rs.scope_spans)
        assert n == np.count_nonzero(s["pid"] == pid)


def test_service_name_from_config_else_module_else_executable():
    def plain(pid):
        proc = spanfactory.process(pid, exe="/opt/srv", module="command-line-arguments")
        return processes.describe(pid, proc, "testhost")

    res = encode.Resources(plain)
    assert attrs(res.resource_for(1).attributes)["service.name"] == "unknown_service:srv"
    unknown = encode.Resources(lambda pid: processes.describe(pid, None, "testhost"))
    assert attrs(unknown.resource_for(1).attributes)["service.name"] == "unknown_service:go"
    named = encode.Resources(plain, {"service.name": "checkout"})
    assert attrs(named.resource_for(1).attributes)["service.name"] == "checkout"


def test_chunks_stay_under_the_byte_cap_and_keep_every_span():
    s = spanfactory.spans(5000, pids=(1, 2))
    chunks = spanfactory.encoder().encode_chunks(s, max_bytes=64 * 1024)
    assert len(chunks) > 5
    seen = []
    for data, count in chunks:
        assert len(data) <= 64 * 1024
        request = ExportTraceServiceRequest.FromString(data)
        ids = [span.span_id for _, span in all_spans(request)]
        assert len(ids) == count
        seen += ids
    assert sorted(seen) == sorted(int(x).to_bytes(8, "big") for x in s["span_id"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
                          st.integers(0, 2**32 - 1), st.sampled_from([0, 1])), min_size=1, max_size=40))
def test_extreme_integers_round_trip(rows):
    s = np.zeros(len(rows), SPAN_DTYPE)
    for i, (goid, big, small, kind) in enumerate(rows):
        s[i]["span_id"], s[i]["trace_lo"] = i + 1, 1
        s[i]["goid"], s[i]["parent_goid"], s[i]["blocked_ns"] = goid, big, big
        s[i]["runnable_ns"], s[i]["n_parks"], s[i]["kind"] = big, small, kind
    request = spanfactory.encoder().request(s)
    for _, span in all_spans(request):
        i = int.from_bytes(span.span_id, "big") - 1
        a = attrs(span.attributes)
        as_int64 = lambda v: v - 2**64 if v >= 2**63 else v  # noqa: E731
        assert a["gotel.goroutine.id"] == as_int64(rows[i][0])
        key = "gotel.park.blocked_ns" if rows[i][3] else "gotel.goroutine.parent_id"
        assert a[key] == as_int64(rows[i][1])
