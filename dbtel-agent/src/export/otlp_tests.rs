use super::*;
use crate::pipeline::{
    attr_block::{AttrBlock, Blocks},
    dbspan::Described,
    span::{Event, Ids, Link},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, trace::v1::ResourceSpans,
};
use prost::Message;

/// Shared by the samples: the second and third splice the first's encoding.
static BLOCKS: std::sync::LazyLock<Blocks> = std::sync::LazyLock::new(|| {
    let facts = AttrBlock::new(vec![KeyValue::new(
        "db.query.text",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    )]);
    let conn = AttrBlock::new(vec![
        KeyValue::new("db.namespace", "postgres"),
        KeyValue::new("server.port", 5432i64),
    ]);
    Blocks::new(Some(&facts), Some(&conn))
});

fn sample(error: bool, parent: u64, remote: bool) -> DbSpan {
    DbSpan::new(
        42,
        Ids {
            trace_id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            span_id: 0x1112_1314_1516_1718,
            parent_span_id: parent,
            remote,
            remote_sampled: remote,
        },
        Kind::Client,
        (1_000_000, 1_052_000),
        Described {
            name: "SELECT pgbench_accounts".into(),
            attributes: vec![
                KeyValue::new("db.system.name", "postgresql"),
                KeyValue::new("db.response.returned_rows", 1i64),
                KeyValue::new("empty", ""),
                KeyValue::new("flag", true),
                KeyValue::new("ratio", 0.5),
                KeyValue::new("negative", -3i64),
                KeyValue::new("list", Value::Array(Array::I64(vec![1, 2]))),
            ],
            blocks: BLOCKS.clone(),
            error: error.then(|| "deadlock detected".to_string()),
        },
        vec![Event {
            name: "transaction.aborted",
            ts_ns: 1_123_456,
            attributes: vec![KeyValue::new("db.response.status_code", "40P01")],
        }],
        vec![Link {
            trace_id: 7,
            span_id: 8,
            attributes: vec![KeyValue::new("dbtel.link", "blocker")],
        }],
    )
}

/// What dbtel writes is what the SDK's transform makes of the same span
/// as SpanData (the console's conversion), field for field.
#[test]
fn encodes_what_the_sdk_transform_encodes() {
    let resource = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "pgbench"),
            KeyValue::new("process.pid", 42i64),
        ])
        .build();
    let transport = Arc::new(crate::export::transport::Http::new(
        traces_url(Some("http://127.0.0.1:1")),
        Vec::new(),
        Duration::from_secs(1),
    ));
    let scope = InstrumentationScope::builder("dbtel")
        .with_version("0.1.0")
        .build();
    let mut e = OtlpExporter::new(transport, None, &scope);
    e.set_resource(&resource);
    let clock = Clock::fixed(1_700_000_000_000_000_000);
    // The last carries a text too long for its block to keep its encoding.
    let mut long = sample(false, 0, false);
    long.blocks.facts = Some(AttrBlock::new(vec![KeyValue::new(
        "db.query.text",
        format!(
            "SELECT '{}'",
            "x".repeat(2 * crate::pipeline::attr_block::KEPT_MAX)
        ),
    )]));
    let spans = [
        sample(true, 0x2122_2324_2526_2728, false),
        sample(false, 0, false),
        sample(false, 0x3132_3334_3536_3738, true),
        long.clone(),
        long,
    ];
    let room = e.head_room().unwrap();
    let mut body = vec![0u8; room];
    for s in &spans {
        span_field(&mut body, s, &clock);
    }
    let ours =
        ExportTraceServiceRequest::decode(&finish_request(&e.resource, &e.scope, body, room)[..])
            .unwrap();
    let sdk_resource = (&resource).into();
    let sdk: Vec<ResourceSpans> =
        opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope(
            spans
                .into_iter()
                .map(|mut s| crate::export::span_data(&mut s, &clock, &scope))
                .collect(),
            &sdk_resource,
        );
    assert_eq!(
        ours,
        ExportTraceServiceRequest {
            resource_spans: sdk
        }
    );
}

#[test]
fn varint_lengths() {
    for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
        let mut b = Vec::new();
        varint(&mut b, v);
        assert_eq!(varint_len(v), b.len(), "{v}");
    }
}

#[test]
fn headers_and_urls_follow_the_otlp_variables() {
    assert_eq!(
        parse_headers("api-key=a%20b, x-tenant = t1,bad,odd=%aé%+f"),
        [
            ("api-key".to_string(), "a b".to_string()),
            ("x-tenant".to_string(), "t1".to_string()),
            ("odd".to_string(), "%aé%+f".to_string())
        ]
    );
    assert_eq!(traces_url(Some("http://c:4318")), "http://c:4318/v1/traces");
    assert_eq!(
        traces_url(Some("http://c:4318/")),
        "http://c:4318/v1/traces"
    );
    assert_eq!(
        traces_url(Some("http://c:4318/v1/traces")),
        "http://c:4318/v1/traces"
    );
}

/// span_field writes the length in place, guessing two bytes: a span
/// shorter than 128 bytes or longer than 16 KiB is moved to fit its length.
#[test]
fn span_fields_of_every_length_size_are_framed_as_protobuf_has_them() {
    let clock = Clock::now();
    let with = |attributes: Vec<KeyValue>| {
        DbSpan::new(
            1,
            Ids {
                trace_id: 1,
                span_id: 2,
                ..Default::default()
            },
            Kind::Server,
            (1, 2),
            Described {
                name: "x".into(),
                attributes,
                blocks: Default::default(),
                error: None,
            },
            Vec::new(),
            Vec::new(),
        )
    };
    for (s, len) in [
        (with(vec![]), 1),
        (sample(false, 0, false), 2),
        (
            with(vec![KeyValue::new("db.query.text", "x".repeat(20_000))]),
            3,
        ),
    ] {
        let mut body = vec![7u8; 3];
        let mut inner = Vec::new();
        span(&mut inner, &s, &clock);
        assert_eq!(varint_len(inner.len() as u64), len);
        span_field(&mut body, &s, &clock);
        let mut want = vec![7u8; 3];
        bytes_field(&mut want, 2, &inner);
        assert_eq!(body, want);
    }
}
