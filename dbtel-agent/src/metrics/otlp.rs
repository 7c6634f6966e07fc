//! OTLP metrics: the store and the agent's own figures as one
//! ExportMetricsServiceRequest (cumulative temporality, as Prometheus reads
//! them too), pushed every OTEL_METRIC_EXPORT_INTERVAL over the same
//! transports as spans. A failed push is not retried: the next one carries
//! the same cumulative values.

use std::{
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{
        metric::Data, number_data_point::Value, AggregationTemporality, Gauge, Histogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    },
    resource::v1::Resource,
};
use prost::Message;

use super::{
    instruments::{Kind, DEFS},
    own::Own,
    store::{Cell, Store},
    Shared,
};
use crate::export::transport::Transport;

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn number(attributes: Vec<KeyValue>, v: f64, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(Value::AsDouble(v)),
        ..Default::default()
    }
}

fn data(kind: Kind, numbers: Vec<NumberDataPoint>, hists: Vec<HistogramDataPoint>) -> Data {
    match kind {
        Kind::Histogram(_) => Data::Histogram(Histogram {
            data_points: hists,
            aggregation_temporality: CUMULATIVE,
        }),
        Kind::Counter => Data::Sum(Sum {
            data_points: numbers,
            aggregation_temporality: CUMULATIVE,
            is_monotonic: true,
        }),
        Kind::Gauge => Data::Gauge(Gauge {
            data_points: numbers,
        }),
    }
}

/// Every instrument with at least one series, then the agent's own figures.
pub fn metrics_of(store: &Store, own: &Own, start: SystemTime, now: SystemTime) -> Vec<Metric> {
    let (start, now) = (unix_nanos(start), unix_nanos(now));
    let mut out = Vec::new();
    for (def, fam) in DEFS.iter().zip(&store.families) {
        if fam.series.is_empty() {
            continue;
        }
        let (mut numbers, mut hists) = (Vec::new(), Vec::new());
        for s in &fam.series {
            let attributes: Vec<KeyValue> = if s.overflow {
                vec![KeyValue {
                    key: "otel.metric.overflow".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::BoolValue(true)),
                    }),
                }]
            } else {
                def.labels
                    .iter()
                    .zip(&s.values)
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| kv(k, v))
                    .collect()
            };
            match (&s.cell, def.kind) {
                (Cell::Histogram { counts, sum, count }, Kind::Histogram(bounds)) => {
                    hists.push(HistogramDataPoint {
                        attributes,
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: *count,
                        sum: Some(*sum),
                        bucket_counts: counts.clone(),
                        explicit_bounds: bounds.to_vec(),
                        ..Default::default()
                    })
                }
                (Cell::Counter(v) | Cell::Gauge(v), _) => {
                    numbers.push(number(attributes, *v, start, now))
                }
                _ => {}
            }
        }
        out.push(Metric {
            name: def.name.into(),
            description: def.help.into(),
            unit: def.unit.into(),
            data: Some(data(def.kind, numbers, hists)),
            ..Default::default()
        });
    }
    for f in own.families() {
        let numbers = f
            .points
            .iter()
            .map(|(l, v)| {
                let attributes = l.map(|(k, v)| vec![kv(k, v)]).unwrap_or_default();
                number(attributes, *v, start, now)
            })
            .collect();
        out.push(Metric {
            name: f.name.into(),
            description: f.help.into(),
            unit: f.unit.into(),
            data: Some(data(f.kind, numbers, Vec::new())),
            ..Default::default()
        });
    }
    out
}

/// The request body: one resource (the agent), one scope.
pub fn encode(resource: &[(&str, String)], metrics: Vec<Metric>) -> bytes::Bytes {
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.iter().map(|(k, v)| kv(k, v)).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "dbtel".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    req.encode_to_vec().into()
}

/// The thread that pushes every interval, and once more at stop.
pub struct Pusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Pusher {
    pub fn start(
        shared: Arc<Shared>,
        transport: Arc<dyn Transport>,
        resource: Vec<(&'static str, String)>,
        interval: Duration,
    ) -> Pusher {
        let (stop, stopped) = mpsc::channel::<()>();
        let started = SystemTime::now();
        let thread = std::thread::Builder::new()
            .name("dbtel-metrics".into())
            .spawn(move || {
                let mut warned: Option<std::time::Instant> = None;
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(interval),
                        Err(mpsc::RecvTimeoutError::Timeout)
                    );
                    let body = {
                        let store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
                        let own = shared.own.lock().unwrap_or_else(|e| e.into_inner());
                        encode(
                            &resource,
                            metrics_of(&store, &own, started, SystemTime::now()),
                        )
                    };
                    match transport.send(&body) {
                        Ok(()) => shared.pushed(true),
                        Err(f) => {
                            shared.pushed(false);
                            // Said at most once a minute (the next push may well work).
                            if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                                log::warn!(
                                    "cannot export metrics to {}: {}",
                                    transport.target(),
                                    f.why
                                );
                                warned = Some(std::time::Instant::now());
                            }
                        }
                    }
                    if last {
                        break;
                    }
                }
            })
            .expect("spawn metrics thread");
        Pusher {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Pushes the final figures (published before this call) and stops.
    pub fn finish(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::instruments::id;
    use super::*;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest as Req;

    #[test]
    fn the_request_carries_what_prometheus_shows() {
        let mut s = Store::default();
        let v = ["postgresql", "shop", "committed"];
        s.observe(id::TXN_DURATION, &v, 0.003);
        s.observe(id::TXN_DURATION, &v, 0.2);
        s.add(id::RETRIES, &["postgresql", "shop"], 2.0);
        let own = Own {
            spans_exported: 7,
            ..Own::default()
        };
        let t = SystemTime::now();
        let body = encode(
            &[("service.name", "dbtel-agent".into())],
            metrics_of(&s, &own, t, t),
        );
        let req = Req::decode(body).unwrap();
        let m = &req.resource_metrics[0].scope_metrics[0].metrics;
        let txn = m
            .iter()
            .find(|m| m.name == "db.transaction.duration")
            .unwrap();
        assert_eq!(txn.unit, "s");
        let Some(Data::Histogram(h)) = &txn.data else {
            panic!()
        };
        assert_eq!(h.data_points[0].count, 2);
        assert_eq!(h.data_points[0].bucket_counts.iter().sum::<u64>(), 2);
        assert_eq!(
            h.data_points[0].explicit_bounds.len() + 1,
            h.data_points[0].bucket_counts.len()
        );
        let retries = m
            .iter()
            .find(|m| m.name == "db.transaction.retries")
            .unwrap();
        let Some(Data::Sum(sum)) = &retries.data else {
            panic!()
        };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points[0].value, Some(Value::AsDouble(2.0)));
        let exported = m.iter().find(|m| m.name == "dbtel.spans.exported").unwrap();
        let Some(Data::Sum(sum)) = &exported.data else {
            panic!()
        };
        assert_eq!(sum.data_points[0].value, Some(Value::AsDouble(7.0)));
        // Instruments without series are left out.
        assert!(!m.iter().any(|m| m.name == "db.lock.wait_duration"));
    }
}
