//! The OTLP receiver's metrics side: MetricsService/Export over gRPC and
//! POST /v1/metrics over HTTP, kept apart from spans (its requests are not
//! counted or refused with theirs). Points are flattened for asserts.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        metrics_service_server::MetricsService, ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
    },
    common::v1::any_value,
    metrics::v1::{metric::Data, number_data_point},
};
use prost::Message;

/// One data point of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub metric: String,
    pub unit: String,
    /// "histogram", "sum" or "gauge".
    pub kind: &'static str,
    pub attributes: BTreeMap<String, String>,
    /// Sum or gauge value; a histogram's sum.
    pub value: f64,
    /// Histograms: observations.
    pub count: u64,
}

impl Point {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attributes.get(k).map(String::as_str)
    }
}

/// Every request received, decoded.
#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

impl Metrics {
    pub fn requests(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The points of the last request (cumulative: it holds everything).
    pub fn latest(&self) -> Vec<Point> {
        let reqs = self.0.lock().unwrap();
        let Some(req) = reqs.last() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for rm in &req.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let point = |kind, attrs: &[_], value, count| Point {
                        metric: m.name.clone(),
                        unit: m.unit.clone(),
                        kind,
                        attributes: flatten(attrs),
                        value,
                        count,
                    };
                    let num = |v: &Option<number_data_point::Value>| match v {
                        Some(number_data_point::Value::AsDouble(d)) => *d,
                        Some(number_data_point::Value::AsInt(i)) => *i as f64,
                        None => f64::NAN,
                    };
                    match &m.data {
                        Some(Data::Histogram(h)) => out.extend(h.data_points.iter().map(|p| {
                            point("histogram", &p.attributes, p.sum.unwrap_or(0.0), p.count)
                        })),
                        Some(Data::Sum(s)) => out.extend(
                            s.data_points
                                .iter()
                                .map(|p| point("sum", &p.attributes, num(&p.value), 0)),
                        ),
                        Some(Data::Gauge(g)) => out.extend(
                            g.data_points
                                .iter()
                                .map(|p| point("gauge", &p.attributes, num(&p.value), 0)),
                        ),
                        _ => {}
                    }
                }
            }
        }
        out
    }

    /// The resource attributes of the last request.
    pub fn resource(&self) -> BTreeMap<String, String> {
        let reqs = self.0.lock().unwrap();
        reqs.last()
            .and_then(|r| r.resource_metrics.first())
            .and_then(|rm| rm.resource.as_ref())
            .map(|r| flatten(&r.attributes))
            .unwrap_or_default()
    }

    fn push(&self, req: ExportMetricsServiceRequest) {
        self.0.lock().unwrap().push(req);
    }

    /// POST /v1/metrics.
    pub fn route(&self) -> axum::Router {
        let m = self.clone();
        axum::Router::new().route(
            "/v1/metrics",
            axum::routing::post(move |body: axum::body::Bytes| {
                let m = m.clone();
                async move {
                    match ExportMetricsServiceRequest::decode(body) {
                        Ok(r) => {
                            m.push(r);
                            let resp = ExportMetricsServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec();
                            (axum::http::StatusCode::OK, resp)
                        }
                        Err(_) => (
                            axum::http::StatusCode::BAD_REQUEST,
                            b"bad protobuf".to_vec(),
                        ),
                    }
                }
            }),
        )
    }
}

fn flatten(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                _ => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}
