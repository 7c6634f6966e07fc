"""An application with its own OpenTelemetry tracing, for dbtel's
application-trace test (tests/tests/app_traces.rs): the OpenTelemetry SDK
exports to the test's OTLP receiver (OTEL_EXPORTER_OTLP_ENDPOINT), and
opentelemetry-instrumentation-psycopg2 with the commenter on appends each
statement's traceparent as a sqlcommenter comment.

Prints its PID, waits for "go", then inside one `handle` span: a transaction
of three statements (psycopg2 sends BEGIN itself, uncommented) committed,
then one autocommit query. Prints the trace id and "done".
"""
import os
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

provider = TracerProvider(resource=Resource.create({"service.name": "otel-app"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
Psycopg2Instrumentor().instrument(enable_commenter=True, skip_dep_check=True)

import psycopg2  # noqa: E402  (after instrumenting: connect is wrapped)

conn = psycopg2.connect(sys.argv[1])
print(os.getpid(), flush=True)
sys.stdin.readline()

tracer = trace.get_tracer("otel-app")
with tracer.start_as_current_span("handle") as span:
    cur = conn.cursor()
    cur.execute("select 1")
    cur.execute("select 2")
    cur.execute("select 3")
    conn.commit()
    conn.autocommit = True
    cur.execute("select 4")
    print("%032x" % span.get_span_context().trace_id, flush=True)
provider.shutdown()
print("done", flush=True)
