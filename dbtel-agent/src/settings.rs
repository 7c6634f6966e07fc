//! Every setting the agent reads from its flags and the OpenTelemetry
//! environment, checked before anything is attached: a bad one stops the
//! agent with one line naming it (exit 2), instead of every export failing
//! later or a worker thread panicking.

use std::{path::Path, time::Duration};

/// What the flags said (the environment is read through `env`).
pub struct Given<'a> {
    /// Spans go out over OTLP (else the endpoint is not used).
    pub otlp: bool,
    pub endpoint_flag: Option<&'a str>,
    pub catalog_period: Duration,
    pub catalog_config: Option<&'a Path>,
    pub spool_dir: Option<&'a Path>,
    pub spool_max_size: u64,
}

/// `--spool-max-size`: bytes, with an optional K/M/G (KiB/MiB/GiB) suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a size such as 512MiB or 2GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{s:?}: a size such as 512MiB or 2GiB")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// `--slow-query-threshold` / SLOW_QUERY_TIME: a bare number is
/// milliseconds (as the in-process libraries read SLOW_QUERY_TIME), else a
/// duration such as 250ms or 2s. Zero is refused (every query would be slow).
pub fn parse_threshold(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let d = match t.parse::<u64>() {
        Ok(ms) => std::time::Duration::from_millis(ms),
        Err(_) => humantime::parse_duration(t)
            .map_err(|_| format!("{s:?}: milliseconds (500) or a duration such as 250ms or 2s"))?,
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than 0"));
    }
    Ok(d)
}

/// The spool holds whole requests (up to a few MiB each).
const SPOOL_AT_LEAST: u64 = 16 << 20;

/// The samplers the SDK offers (OTEL_TRACES_SAMPLER).
const SAMPLERS: &[&str] = &[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// The first bad setting, as one line naming it.
pub fn check(g: &Given, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    if g.catalog_period.is_zero() {
        return Err("--catalog-period: must be longer than 0 s".into());
    }
    if let Some(f) = g.catalog_config {
        std::fs::File::open(f).map_err(|e| format!("--catalog-config {}: {e}", f.display()))?;
    }
    if g.spool_dir.is_some() {
        if !g.otlp {
            return Err("--spool-dir: only with --exporter otlp".into());
        }
        if g.spool_max_size < SPOOL_AT_LEAST {
            return Err(format!(
                "--spool-max-size: at least {} MiB (a spooled request can take a few)",
                SPOOL_AT_LEAST >> 20
            ));
        }
    }
    if g.otlp {
        if let Some(e) = g.endpoint_flag {
            url("--otlp-endpoint", e)?;
        }
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            if let Some(e) = env(var) {
                url(var, &e)?;
            }
        }
        for var in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(h) = env(var) {
                headers(var, &h)?;
            }
        }
        for var in [
            "OTEL_EXPORTER_OTLP_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        ] {
            if let Some(t) = env(var) {
                match t.trim().parse::<u64>() {
                    Ok(ms) if ms > 0 => {}
                    _ => {
                        return Err(format!(
                            "{var}={t:?}: a timeout in milliseconds, more than 0"
                        ))
                    }
                }
            }
        }
    }
    if let Some(q) = env("OTEL_BSP_MAX_QUEUE_SIZE") {
        match q.trim().parse::<usize>() {
            Ok(n) if n > 0 => {}
            _ => {
                return Err(format!(
                    "OTEL_BSP_MAX_QUEUE_SIZE={q:?}: a number of spans, more than 0"
                ))
            }
        }
    }
    let sampler = env("OTEL_TRACES_SAMPLER");
    if let Some(s) = &sampler {
        if !SAMPLERS.contains(&s.trim()) {
            return Err(format!(
                "OTEL_TRACES_SAMPLER={s:?}: not a sampler dbtel offers ({})",
                SAMPLERS.join(", ")
            ));
        }
    }
    if let Some(arg) = env("OTEL_TRACES_SAMPLER_ARG") {
        let ratio = sampler
            .as_deref()
            .is_some_and(|s| s.ends_with("traceidratio"));
        match arg.trim().parse::<f64>() {
            Ok(r) if ratio && !(0.0..=1.0).contains(&r) => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER_ARG={arg:?}: a ratio between 0 and 1"
                ));
            }
            Err(_) if ratio => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER_ARG={arg:?}: a ratio between 0 and 1"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// An OTLP endpoint: an http or https URL with a host.
fn url(name: &str, value: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{name}={value:?}: {why}"));
    if value.trim().is_empty() {
        return bad("empty");
    }
    match reqwest::Url::parse(value.trim()) {
        Ok(u) if !matches!(u.scheme(), "http" | "https") => bad("not an http:// or https:// URL"),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => bad("no host"),
        Ok(_) => Ok(()),
        Err(e) => bad(&format!(
            "not a URL ({e}); expected http://host:port or https://host:port"
        )),
    }
}

/// `key=value,key=value` (W3C baggage form, values percent-encoded).
fn headers(name: &str, value: &str) -> Result<(), String> {
    // Values may be secrets: never shown.
    for (i, item) in value
        .split(',')
        .filter(|i| !i.trim().is_empty())
        .enumerate()
    {
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("{name}: header {} is not key=value", i + 1));
        };
        let k = k.trim();
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if k.is_empty() || !k.chars().all(token) {
            return Err(format!("{name}: {k:?} is not a header name"));
        }
        if v.chars().any(|c| c.is_control()) {
            return Err(format!(
                "{name}: the value of {k} holds a control character (CR, LF, …)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given() -> Given<'static> {
        Given {
            otlp: true,
            endpoint_flag: None,
            catalog_period: Duration::from_secs(2),
            catalog_config: None,
            spool_dir: None,
            spool_max_size: 1 << 30,
        }
    }

    #[test]
    fn slow_query_thresholds() {
        use std::time::Duration;
        assert_eq!(parse_threshold("500"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_threshold("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_threshold("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_threshold("0").unwrap_err().contains("more than 0"));
        assert!(parse_threshold("soon")
            .unwrap_err()
            .contains("milliseconds"));
    }

    #[test]
    fn sizes_and_the_spool() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5PB").is_err());
        let dir = Path::new("/tmp/spool");
        let mut g = given();
        g.spool_dir = Some(dir);
        assert_eq!(check(&g, &|_| None), Ok(()));
        g.spool_max_size = 1 << 20;
        assert!(check(&g, &|_| None)
            .unwrap_err()
            .starts_with("--spool-max-size:"));
        g.otlp = false;
        assert!(check(&g, &|_| None)
            .unwrap_err()
            .starts_with("--spool-dir:"));
    }

    fn with(vars: &[(&str, &str)]) -> Result<(), String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        check(&given(), &|k| {
            vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn good_settings_pass() {
        assert_eq!(with(&[]), Ok(()));
        assert_eq!(
            with(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=abc%20d, x-tenant=7"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "10000"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]),
            Ok(())
        );
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "",
                "OTEL_EXPORTER_OTLP_ENDPOINT=\"\": empty",
            ),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "ftp://x",
                "OTEL_EXPORTER_OTLP_ENDPOINT=\"ftp://x\": not an http:// or https:// URL",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "garbage",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=\"garbage\": not a URL",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "a=b,secret-key",
                "OTEL_EXPORTER_OTLP_HEADERS: header 2 is not key=value",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "a=b\r\nx: y",
                "OTEL_EXPORTER_OTLP_HEADERS: the value of a holds a control character",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "a b=c",
                "OTEL_EXPORTER_OTLP_HEADERS: \"a b\" is not a header name",
            ),
            (
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                "0",
                "OTEL_EXPORTER_OTLP_TIMEOUT=\"0\": a timeout in milliseconds",
            ),
            (
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "ten",
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT=\"ten\"",
            ),
            (
                "OTEL_TRACES_SAMPLER",
                "bogus",
                "OTEL_TRACES_SAMPLER=\"bogus\": not a sampler",
            ),
        ];
        for (var, value, want) in cases {
            let got = with(&[(var, value)]).unwrap_err();
            assert!(got.starts_with(want), "{var}={value:?}: {got}");
        }
        let ratio = with(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert!(ratio
            .unwrap_err()
            .starts_with("OTEL_TRACES_SAMPLER_ARG=\"2\": a ratio"));
        let mut g = given();
        g.catalog_period = Duration::ZERO;
        assert_eq!(
            check(&g, &|_| None).unwrap_err(),
            "--catalog-period: must be longer than 0 s"
        );
        g = given();
        g.endpoint_flag = Some("localhost:4318");
        assert!(check(&g, &|_| None)
            .unwrap_err()
            .starts_with("--otlp-endpoint=\"localhost:4318\": not an http:// or https:// URL"));
        g = given();
        g.catalog_config = Some(Path::new("/nonexistent/dbtel.conf"));
        assert!(check(&g, &|_| None)
            .unwrap_err()
            .starts_with("--catalog-config /nonexistent/dbtel.conf: No such file"));
        // Not exporting over OTLP: its settings are not used, so not checked.
        g = given();
        g.otlp = false;
        assert_eq!(
            check(&g, &|k| (k == "OTEL_EXPORTER_OTLP_ENDPOINT")
                .then(|| "ftp://x".into())),
            Ok(())
        );
    }
}
