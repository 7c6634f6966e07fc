//! `/metrics`: Prometheus text exposition format 0.0.4. Names carry no unit
//! suffix (the unit is in the help text), so the PromQL users of in-process
//! libraries already have (`db_query_duration_bucket`, …) works verbatim.

use std::fmt::Write;

use super::{
    instruments::{prometheus_name, Kind, DEFS},
    own::Own,
    store::{Cell, Store},
};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn label_name(attr: &str) -> String {
    attr.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn escape(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// `{a="x",b="y"}` (absent values left out), with `extra` appended.
fn labels(
    names: &[String],
    values: &[Box<str>],
    overflow: bool,
    extra: Option<(&str, &str)>,
) -> String {
    let mut s = String::new();
    let mut first = true;
    let mut put = |s: &mut String, k: &str, v: &str| {
        s.push(if first { '{' } else { ',' });
        first = false;
        s.push_str(k);
        s.push_str("=\"");
        escape(v, s);
        s.push('"');
    };
    if overflow {
        put(&mut s, "otel_metric_overflow", "true");
    } else {
        for (k, v) in names.iter().zip(values) {
            if !v.is_empty() {
                put(&mut s, k, v);
            }
        }
    }
    if let Some((k, v)) = extra {
        put(&mut s, k, v);
    }
    if !first {
        s.push('}');
    }
    s
}

fn header(out: &mut String, name: &str, help: &str, unit: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help} Unit: {unit}.");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(store: &Store, own: &Own) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for (def, fam) in DEFS.iter().zip(&store.families) {
        let name = prometheus_name(def.name, def.kind);
        let names: Vec<String> = def.labels.iter().map(|l| label_name(l)).collect();
        let kind = match def.kind {
            Kind::Histogram(_) => "histogram",
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        header(&mut out, &name, def.help, def.unit, kind);
        for s in &fam.series {
            match (&s.cell, def.kind) {
                (Cell::Histogram { counts, sum, count }, Kind::Histogram(bounds)) => {
                    let mut acc = 0;
                    for (i, c) in counts.iter().enumerate() {
                        acc += c;
                        let le = bounds.get(i).map_or("+Inf".to_string(), |b| number(*b));
                        let l = labels(&names, &s.values, s.overflow, Some(("le", &le)));
                        let _ = writeln!(out, "{name}_bucket{l} {acc}");
                    }
                    let l = labels(&names, &s.values, s.overflow, None);
                    let _ = writeln!(out, "{name}_sum{l} {}", number(*sum));
                    let _ = writeln!(out, "{name}_count{l} {count}");
                }
                (Cell::Counter(v) | Cell::Gauge(v), _) => {
                    let l = labels(&names, &s.values, s.overflow, None);
                    let _ = writeln!(out, "{name}{l} {}", number(*v));
                }
                _ => {}
            }
        }
    }
    render_own(own, &mut out);
    out
}

fn render_own(o: &Own, out: &mut String) {
    for f in o.families() {
        let name = prometheus_name(f.name, f.kind);
        let kind = if f.kind == Kind::Counter {
            "counter"
        } else {
            "gauge"
        };
        header(out, &name, f.help, f.unit, kind);
        for (l, v) in &f.points {
            let l = labels(&[], &[], false, *l);
            let _ = writeln!(out, "{name}{l} {}", number(*v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::instruments::id;
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let mut s = Store::default();
        let v = ["postgresql", "shop", "committed"];
        s.observe(id::TXN_DURATION, &v, 0.003);
        s.observe(id::TXN_DURATION, &v, 0.2);
        s.add(id::RETRIES, &["postgresql", "sh\"op"], 1.0);
        let text = render(&s, &Own::default());
        let l =
            r#"db_system_name="postgresql",db_namespace="shop",db_transaction_outcome="committed""#;
        for line in [
            "# TYPE db_transaction_duration histogram".to_string(),
            format!("db_transaction_duration_bucket{{{l},le=\"0.0025\"}} 0"),
            format!("db_transaction_duration_bucket{{{l},le=\"0.005\"}} 1"),
            format!("db_transaction_duration_bucket{{{l},le=\"0.25\"}} 2"),
            format!("db_transaction_duration_bucket{{{l},le=\"+Inf\"}} 2"),
            format!("db_transaction_duration_sum{{{l}}} 0.203"),
            format!("db_transaction_duration_count{{{l}}} 2"),
            r#"db_transaction_retries_total{db_system_name="postgresql",db_namespace="sh\"op"} 1"#.into(),
            "# TYPE db_transaction_retries_total counter".into(),
            "# HELP db_query_duration Duration of queries, each counted once (the client's span, or the server's where its client is not traced). Unit: s.".into(),
            "dbtel_spans_made_total 0".into(),
            r#"dbtel_events_lost_total{reason="ring_buffer_full"} 0"#.into(),
        ] {
            assert!(text.lines().any(|x| x == line), "{line} not in\n{text}");
        }
    }
}
