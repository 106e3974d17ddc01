"""gotel's OTLP exporter against the real Collector's receiver settings: TLS (a CA and server
certificate made here), mutual TLS, headers (the Collector's bearer-token authenticator checks
them), gzip and no compression (bytes counted on the wire by a pass-through proxy); and gotel's request-size cap against the Collector's default
4 MiB gRPC message limit, with its trace bound.

One traced run feeds every Collector at once; each must hold exactly the spans gotel encoded, and
the exporters that lack the token or the client certificate must be refused.
"""

import collections
import functools
import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import realpeers as peers
from pipeline import config, decoder
from pipeline.app.runner import run_service

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

TOKEN = "gotel-test-token"


def make_cert(directory, name, issuer=None, ca=False):
    """(cert path, key path) of an EC certificate for 127.0.0.1/localhost, signed by ``issuer``
    ((cert, key) objects) or self-signed; returns the objects too for signing others."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"gotel test {name}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, (cert, key)


@pytest.fixture(scope="module")
def run(require_bpf, go_build, tmp_path_factory):
    base = tmp_path_factory.mktemp("secure")
    ca_crt, _, ca = make_cert(base, "ca", ca=True)
    srv_crt, srv_key, _ = make_cert(base, "server", issuer=ca)
    cli_crt, cli_key, _ = make_cert(base, "client", issuer=ca)
    server_tls = {"cert_file": str(srv_crt), "key_file": str(srv_key)}
    binary = go_build("churn", "1.25")
    started = []
    try:
        for name, grpc, extensions in (
                ("tls", {"tls": server_tls}, None),
                ("mtls", {"tls": {**server_tls, "client_ca_file": str(ca_crt)}}, None),
                ("auth", {"auth": {"authenticator": "bearertokenauth"}},
                 {"bearertokenauth": {"token": TOKEN}}),
                ("plain", None, None)):
            started.append(peers.collector(base / name, receiver_grpc=grpc, extensions=extensions,
                                           name=name))
        tls, mtls, auth, plain = started
        # what the gzip and the uncompressed exporter really send, counted on the wire
        wire = {"auth": peers.CountingProxy(auth.endpoint()),
                "plain": peers.CountingProxy(plain.endpoint())}
        no_retry = "retry_on_failure: {enabled: false}"
        cfg = config.loads(f"""
receivers:
  goroutines:
    command: ["{binary}", spawn, "80000"]
    ring_bytes: 67108864
processors:
  batch: {{send_batch_size: 50000, timeout: 2s}}
exporters:
  otlp/tls: {{endpoint: "{tls.endpoint()}", tls: {{ca_file: "{ca_crt}"}}}}
  otlp/mtls:
    endpoint: "{mtls.endpoint()}"
    tls: {{ca_file: "{ca_crt}", cert_file: "{cli_crt}", key_file: "{cli_key}"}}
  otlp/mtls-no-cert: {{endpoint: "{mtls.endpoint()}", tls: {{ca_file: "{ca_crt}"}}, {no_retry}}}
  otlp/auth:
    endpoint: "{wire['auth'].endpoint}"
    tls: {{insecure: true}}
    headers: {{authorization: "Bearer {TOKEN}"}}
    compression: none
  otlp/auth-no-token: {{endpoint: "{auth.endpoint()}", tls: {{insecure: true}}, {no_retry}}}
  otlp/plain: {{endpoint: "{wire['plain'].endpoint}", tls: {{insecure: true}}, compression: gzip}}
service:
  pipelines:
    traces:
      receivers: [goroutines]
      processors: [batch]
      exporters: [otlp/tls, otlp/mtls, otlp/mtls-no-cert, otlp/auth, otlp/auth-no-token,
                  otlp/plain]
""")
        service = run_service(cfg, duration=120, summary=False)
    finally:
        codes = {p.name: p.stop() for p in started}
    assert set(codes.values()) == {0}, codes
    for proxy in wire.values():
        proxy.close()
    yield {"service": service, "base": base, "wire": {k: p.sent for k, p in wire.items()}}


@functools.lru_cache(maxsize=8)
def span_ids(path):
    return collections.Counter((s["traceId"], s["spanId"]) for request in peers.read_jsonl(path)
                               for rs in request.get("resourceSpans", ())
                               for ss in rs.get("scopeSpans", ()) for s in ss.get("spans", ()))


@pytest.mark.parametrize("name", ["tls", "mtls", "auth", "plain"])
def test_the_collector_receives_every_span_over_each_transport(run, name):
    service = run["service"]
    made = service.fanouts[0].items_out               # spans gotel encoded and handed over
    assert service.receiver.source.lost == 0
    assert made > 80000
    received = span_ids(run["base"] / name / "traces.json")
    assert sum(received.values()) == made and set(received.values()) == {1}
    assert received.keys() == span_ids(run["base"] / "plain" / "traces.json").keys()
    counters = service.exporters[f"otlp/{name}"].counters
    assert counters.get("sent_spans", "traces") == made
    assert counters.get("send_failed_spans", "traces") == 0


def test_gzip_is_on_the_wire(run):
    """The same spans cost the gzip exporter a fraction of the bytes of the uncompressed one."""
    wire = run["wire"]
    print("bytes sent:", wire)
    assert wire["auth"] > 10 * 2**20 and wire["plain"] < wire["auth"] / 3, wire


@pytest.mark.parametrize("name", ["mtls-no-cert", "auth-no-token"])
def test_the_collector_refuses_an_exporter_without_its_credentials(run, name):
    counters = run["service"].exporters[f"otlp/{name}"].counters
    assert counters.get("sent_spans", "traces") == 0
    assert counters.get("send_failed_spans", "traces") > 0


def test_requests_stay_under_the_collectors_default_message_limit(run):
    """The Collector's gRPC receiver refuses messages over 4 MiB (max_recv_msg_size_mib: 4) by
    default; gotel cuts requests at send_batch_max_bytes (4 MiB - 64 KiB). Batches of 60000 spans
    (~5 MB encoded) are cut, every cut request is accepted (previous tests), and traces stay bounded."""
    fanout = run["service"].fanouts[0]
    assert 3 * 2**20 < fanout.largest_request <= 4 * 2**20 - 64 * 1024, fanout.largest_request
    per_trace = collections.Counter(t for t, _ in span_ids(run["base"] / "plain" / "traces.json"))
    bound = decoder.Config().max_spans_per_trace
    assert max(per_trace.values()) <= 2 * bound + 8192, max(per_trace.values())
    assert len(per_trace) > 80000 / (2 * bound + 8192)
