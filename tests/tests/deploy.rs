//! The deployment files in deploy/: every YAML document parses, the Kubernetes
//! manifests hold what the agent needs, the ConfigMaps embed the files they say
//! they do, the DaemonSet and the systemd unit agree, and systemd accepts the unit.
//! The Grafana dashboard and the alerting rules query only metrics and labels the
//! agent exports, in PromQL that parses; promtool checks the rules and runs their tests.

use std::{
    collections::BTreeSet,
    fs,
    iter::Peekable,
    path::{Path, PathBuf},
    process::Command,
    str::Chars,
};

use serde::Deserialize;
use serde_yaml_ng::Value;

const CAPABILITIES: [&str; 5] = [
    "BPF",
    "PERFMON",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];
const UNIT: &str = "dbtel-agent.service";
const BINARY: &str = "/usr/local/bin/dbtel-agent";
/// The agent's long flags, in snake_case, that config.yaml shows (set or as a comment).
const CONFIG_KEYS: [&str; 23] = [
    "all",
    "exe",
    "exclude_exe",
    "port",
    "cgroup",
    "exporter",
    "console_format",
    "otlp_endpoint",
    "otlp_protocol",
    "service_name",
    "raw_query_text",
    "keep_comments",
    "max_query_length",
    "catalog_config",
    "catalog_period",
    "no_catalog",
    "http_address",
    "metrics_exporter",
    "metric_export_interval",
    "metrics_max_summaries",
    "slow_query_threshold",
    "n_plus_one_threshold",
    "n_plus_one_burst_gap",
];

/// Flags config.yaml may set but need not show (one-off and benchmark flags).
const OTHER_KEYS: [&str; 3] = ["pid", "probe_stats", "probes_only"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a (possibly multi-document) YAML file.
fn documents(name: &str) -> Vec<Value> {
    let text = read(name);
    serde_yaml_ng::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, doc)| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}, document {}: {e}", i + 1))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_files() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    names
}

/// Follows a path of mapping keys and sequence indexes.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| {
        match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key),
        }
        .unwrap_or_else(|| panic!("no {path} (stopped at {key}) in {v:?}"))
    })
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

fn seq_at<'a>(v: &'a Value, path: &str) -> &'a Vec<Value> {
    at(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a sequence"))
}

fn strings(v: &[Value]) -> Vec<&str> {
    v.iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{s:?} is not a string"))
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d.get("kind").and_then(Value::as_str) == Some(kind)
                && str_at(d, "metadata.name") == name
        })
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn named<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|i| str_at(i, "name") == name)
        .unwrap_or_else(|| panic!("nothing named {name}"))
}

fn agent_container(docs: &[Value]) -> &Value {
    named(
        seq_at(
            find(docs, "DaemonSet", "dbtel-agent"),
            "spec.template.spec.containers",
        ),
        "dbtel-agent",
    )
}

/// The value of an env entry given as `value:`.
fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    str_at(named(seq_at(container, "env"), name), "value")
}

/// A container port given by number or by name.
fn port_number(container: &Value, port: &Value) -> u64 {
    match port.as_u64() {
        Some(n) => n,
        None => at(
            named(seq_at(container, "ports"), port.as_str().unwrap()),
            "containerPort",
        )
        .as_u64()
        .unwrap(),
    }
}

/// `Key=Value` lines of a unit file, in order, comments left out.
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('[')
        })
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=Value: {l}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn unit_setting(text: &str, key: &str) -> String {
    let mut found = unit_settings(text)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v);
    let value = found
        .next()
        .unwrap_or_else(|| panic!("{UNIT} has no {key}="));
    assert!(found.next().is_none(), "{UNIT} sets {key}= more than once");
    value
}

#[test]
fn every_yaml_document_parses() {
    let files = yaml_files();
    for expected in [
        "config.yaml",
        "daemonset.yaml",
        "otel-collector.yaml",
        "collector.yaml",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "deploy/{expected} is missing: {files:?}"
        );
    }
    for file in &files {
        let docs = documents(file);
        assert!(!docs.is_empty(), "{file} has no document");
        for doc in &docs {
            assert!(
                doc.is_mapping(),
                "{file}: a document is not a mapping: {doc:?}"
            );
        }
    }
    // The Kubernetes manifests: each object has its kind, name, and the dbtel namespace.
    for file in ["daemonset.yaml", "collector.yaml"] {
        for doc in documents(file) {
            let kind = str_at(&doc, "kind");
            str_at(&doc, "apiVersion");
            str_at(&doc, "metadata.name");
            if kind != "Namespace" {
                assert_eq!(
                    str_at(&doc, "metadata.namespace"),
                    "dbtel",
                    "{file}: {kind}"
                );
            }
            if matches!(kind, "DaemonSet" | "Deployment") {
                let selector = at(&doc, "spec.selector.matchLabels").as_mapping().unwrap();
                let labels = at(&doc, "spec.template.metadata.labels");
                for (k, v) in selector {
                    assert_eq!(
                        labels.get(k),
                        Some(v),
                        "{file}: {kind}'s selector does not match its pods"
                    );
                }
            }
        }
    }
}

#[test]
fn daemonset_traces_the_whole_host() {
    let docs = documents("daemonset.yaml");
    let ds = find(&docs, "DaemonSet", "dbtel-agent");
    let pod = at(ds, "spec.template.spec");
    assert_eq!(at(pod, "hostPID").as_bool(), Some(true));
    find(&docs, "Namespace", "dbtel");
    find(&docs, "ServiceAccount", str_at(pod, "serviceAccountName"));

    let c = agent_container(&docs);
    let sc = at(c, "securityContext");
    let added: BTreeSet<&str> = strings(seq_at(sc, "capabilities.add"))
        .into_iter()
        .collect();
    assert_eq!(added, CAPABILITIES.into_iter().collect::<BTreeSet<_>>());
    assert_eq!(strings(seq_at(sc, "capabilities.drop")), ["ALL"]);
    assert_eq!(at(sc, "privileged").as_bool(), Some(false));
    assert_eq!(at(sc, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(str_at(sc, "seccompProfile.type"), "Unconfined");
    assert_eq!(str_at(sc, "appArmorProfile.type"), "Unconfined");
    let annotation = format!(
        "container.apparmor.security.beta.kubernetes.io/{}",
        str_at(c, "name")
    );
    assert_eq!(
        at(ds, "spec.template.metadata.annotations")
            .get(annotation.as_str())
            .and_then(Value::as_str),
        Some("unconfined")
    );

    // /healthz on the port config.yaml's http_address serves.
    let config: Value = serde_yaml_ng::from_str(&read("config.yaml")).unwrap();
    let http_port: u64 = str_at(&config, "http_address")
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = at(c, &format!("{probe}.httpGet"));
        assert_eq!(str_at(get, "path"), "/healthz", "{probe}");
        assert_eq!(port_number(c, at(get, "port")), http_port, "{probe}");
    }

    // k8s.node.name from the downward API; NODE_NAME defined before it is used.
    let env = seq_at(c, "env");
    let node = env
        .iter()
        .position(|e| str_at(e, "name") == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(
        str_at(&env[node], "valueFrom.fieldRef.fieldPath"),
        "spec.nodeName"
    );
    let attrs = env
        .iter()
        .position(|e| str_at(e, "name") == "OTEL_RESOURCE_ATTRIBUTES")
        .expect("OTEL_RESOURCE_ATTRIBUTES");
    assert!(
        node < attrs,
        "NODE_NAME must come before the variable that uses it"
    );
    assert!(str_at(&env[attrs], "value")
        .split(',')
        .any(|kv| kv == "k8s.node.name=$(NODE_NAME)"));

    // --all, and --config naming config.yaml in the mounted ConfigMap.
    let args = strings(seq_at(c, "args"));
    assert!(args.contains(&"--all"), "{args:?}");
    let config_path = args[args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config")
        + 1];
    let (dir, file) = config_path.rsplit_once('/').unwrap();
    let mount = seq_at(c, "volumeMounts")
        .iter()
        .find(|m| str_at(m, "mountPath") == dir)
        .expect("config mount");
    let volume = named(seq_at(pod, "volumes"), str_at(mount, "name"));
    let map = find(&docs, "ConfigMap", str_at(volume, "configMap.name"));
    assert!(
        at(map, "data").get(file).is_some(),
        "the ConfigMap has no {file}"
    );

    assert_eq!(str_at(c, "resources.limits.memory"), "256Mi");
    let tracefs = seq_at(c, "volumeMounts")
        .iter()
        .find(|m| str_at(m, "mountPath") == "/sys/kernel/tracing")
        .expect("tracefs mount");
    assert_eq!(
        str_at(
            named(seq_at(pod, "volumes"), str_at(tracefs, "name")),
            "hostPath.path"
        ),
        "/sys/kernel/tracing"
    );
}

/// Names the first line where an embedded copy differs from its file.
fn assert_embeds(manifest: &str, map: &str, file: &str) {
    let docs = documents(manifest);
    let embedded = at(find(&docs, "ConfigMap", map), "data")
        .get(file)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{manifest}: ConfigMap {map} has no {file}"));
    let original = read(file);
    if embedded != original {
        let line = embedded
            .lines()
            .zip(original.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(embedded.lines().count().min(original.lines().count()));
        panic!(
            "{manifest}: ConfigMap {map} must hold deploy/{file} verbatim (indented by four spaces); they differ at its line {}:\n  embedded: {:?}\n  file:     {:?}",
            line + 1,
            embedded.lines().nth(line),
            original.lines().nth(line)
        );
    }
}

#[test]
fn configmaps_embed_the_files_verbatim() {
    assert_embeds("daemonset.yaml", "dbtel-agent", "config.yaml");
    assert_embeds("collector.yaml", "otel-collector", "otel-collector.yaml");
}

#[test]
fn config_keys_are_the_agents_flags() {
    let text = read("config.yaml");
    let config: Value = serde_yaml_ng::from_str(&text).unwrap();
    for key in config.as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(
            CONFIG_KEYS.contains(&key) || OTHER_KEYS.contains(&key),
            "config.yaml: {key} is not one of the agent's flags"
        );
    }
    // Each flag is shown, set or as a commented example.
    for key in CONFIG_KEYS {
        let shown = text.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key}:"))
        });
        assert!(shown, "config.yaml does not show {key}");
    }
    assert_eq!(at(&config, "all").as_bool(), Some(true));
    assert!(["otlp", "console", "none"].contains(&str_at(&config, "exporter")));
    assert!(["grpc", "http/protobuf"].contains(&str_at(&config, "otlp_protocol")));
    // No secret in the file the ConfigMap publishes.
    assert!(!text
        .lines()
        .any(|l| !l.trim_start().starts_with('#') && l.to_lowercase().contains("password")));
}

#[test]
fn agents_reach_the_collector() {
    let agent = documents("daemonset.yaml");
    let collector = documents("collector.yaml");
    let config: Value = serde_yaml_ng::from_str(&read("config.yaml")).unwrap();
    let otel: Value = serde_yaml_ng::from_str(&read("otel-collector.yaml")).unwrap();

    // The agents' endpoint is the collector Service, on the port of their protocol.
    let endpoint = env_value(agent_container(&agent), "OTEL_EXPORTER_OTLP_ENDPOINT");
    let rest = endpoint
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("{endpoint}"));
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':').unwrap();
    let port: u64 = port.parse().unwrap();
    let mut labels = host.split('.');
    let (svc, ns) = (labels.next().unwrap(), labels.next().unwrap());
    let service = find(&collector, "Service", svc);
    assert_eq!(str_at(service, "metadata.namespace"), ns);
    let expected = match str_at(&config, "otlp_protocol") {
        "grpc" => 4317,
        _ => 4318,
    };
    assert_eq!(port, expected, "{endpoint} does not match otlp_protocol");
    let ports = seq_at(service, "spec.ports");
    assert!(
        ports.iter().any(|p| at(p, "port").as_u64() == Some(port)),
        "the Service lacks the agents' port {port}"
    );

    // The Service reaches the collector's container, which listens there.
    let deployment = find(&collector, "Deployment", "otel-collector");
    let c = &seq_at(deployment, "spec.template.spec.containers")[0];
    for p in ports {
        let target = port_number(c, at(p, "targetPort"));
        let receiver = if target == 4317 { "grpc" } else { "http" };
        let listen = str_at(
            &otel,
            &format!("receivers.otlp.protocols.{receiver}.endpoint"),
        );
        assert!(
            listen.ends_with(&format!(":{target}")),
            "{listen} vs the Service's {target}"
        );
    }

    // Every component a pipeline names is configured, and the probes reach health_check.
    for (_, pipeline) in at(&otel, "service.pipelines").as_mapping().unwrap() {
        for section in ["receivers", "processors", "exporters"] {
            for name in strings(seq_at(pipeline, section)) {
                assert!(
                    at(&otel, section).get(name).is_some(),
                    "{section}: {name} is used but not configured"
                );
            }
        }
        assert_eq!(
            strings(seq_at(pipeline, "processors"))[0],
            "memory_limiter",
            "memory_limiter comes first"
        );
    }
    for name in strings(seq_at(&otel, "service.extensions")) {
        assert!(
            at(&otel, "extensions").get(name).is_some(),
            "extension {name} is not configured"
        );
    }
    let health: u64 = str_at(&otel, "extensions.health_check.endpoint")
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert_eq!(port_number(c, at(c, "livenessProbe.httpGet.port")), health);
}

#[test]
fn unit_matches_the_daemonset() {
    let unit = read(UNIT);
    let docs = documents("daemonset.yaml");
    let c = agent_container(&docs);
    let expected: BTreeSet<String> = strings(seq_at(at(c, "securityContext"), "capabilities.add"))
        .into_iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let caps: BTreeSet<String> = unit_setting(&unit, key)
            .split_whitespace()
            .map(String::from)
            .collect();
        assert_eq!(
            caps, expected,
            "{key}= and the DaemonSet's capabilities differ"
        );
    }
    let exec = unit_setting(&unit, "ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some(BINARY));
    assert_eq!(
        words.collect::<Vec<_>>(),
        strings(seq_at(c, "args")),
        "the unit and the DaemonSet run different arguments"
    );
    assert_eq!(unit_setting(&unit, "MemoryMax"), "256M");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(unit_setting(&unit, key), value, "{key}=");
    }
    for key in [
        "ProtectProc",
        "ProcSubset",
        "PrivateUsers",
        "PrivateNetwork",
    ] {
        assert!(
            !unit_settings(&unit).iter().any(|(k, _)| k == key),
            "{key}= would stop the agent"
        );
    }
}

/// `systemd-analyze verify` on a copy of the unit whose ExecStart names an
/// existing program (the agent is not installed here). It exits 0 even for a
/// setting it ignores, so any line naming the unit fails the test too.
fn verify(unit: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(UNIT);
    fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze (apt-get install systemd): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains(UNIT), text)
}

#[test]
fn systemd_accepts_the_unit() {
    let stand_in = "/bin/true";
    assert!(Path::new(stand_in).exists());
    let unit = read(UNIT);
    assert_eq!(unit.matches(&format!("ExecStart={BINARY} ")).count(), 1);
    let rendered = unit.replace(
        &format!("ExecStart={BINARY} "),
        &format!("ExecStart={stand_in} "),
    );
    let (ok, output) = verify(&rendered);
    assert!(ok, "systemd-analyze verify {UNIT}:\n{output}");
    // The check itself: a misspelt setting is caught.
    let (ok, output) = verify(&rendered.replace(
        "ProtectHome=read-only",
        "ProtectHome=read-only\nProtectHomes=yes",
    ));
    assert!(
        !ok && output.contains("ProtectHomes"),
        "a bad setting went unnoticed:\n{output}"
    );
}

/// The unit's ExecStart, with the installed paths pointing at this build and this checkout.
fn exec_start() -> Vec<String> {
    let line = unit_setting(&read(UNIT), "ExecStart");
    let config = deploy_dir().join("config.yaml");
    line.split_whitespace()
        .map(|w| match w {
            BINARY => dbtel_tests::agent_binary().display().to_string(),
            "/etc/dbtel/config.yaml" => config.display().to_string(),
            w => w.to_string(),
        })
        .collect()
}

/// A real run of the unit's command line with the example config, holding the
/// unit's capabilities and no other (no new privileges): it traces the host (a server and a client started after it), answers /healthz, and stops
/// cleanly on SIGTERM as systemd stops it. The endpoint comes from the
/// environment (the unit's EnvironmentFile); the health address, which the
/// file sets to a fixed port, is moved to a free one by a flag.
#[test]
fn the_units_command_line_runs() {
    dbtel_tests::require_root();
    let rx = dbtel_tests::Receiver::start();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cmd = exec_start();
    let mut args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
    let health = addr.to_string();
    args.extend(["--http-address", &health]);
    // With no capability but the unit's bounding set, as systemd runs it.
    let caps = unit_setting(&read(UNIT), "CapabilityBoundingSet");
    let bounding: Vec<String> = caps
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let bounding = format!("-all,{}", bounding.join(","));
    let wrapper = ["setpriv", "--bounding-set", &bounding, "--no-new-privs"];
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", rx.http_endpoint())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut agent =
        dbtel_tests::Agent::start_wrapped(&wrapper, &args, &env, std::process::Stdio::null());
    let status = fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        u64::from_str_radix(&eff, 16).unwrap(),
        (1 << 39) | (1 << 38) | (1 << 21) | (1 << 19) | (1 << 2),
        "only the unit's capabilities"
    );
    assert_eq!(
        dbtel_tests::http_get(addr, "/healthz").map(|(s, _)| s),
        Some(200)
    );
    let pg = dbtel_tests::Cluster::start_logged();
    // A server started after the agent is probed once its postmaster is seen
    // (no hold: its first sessions may run before, on a loaded host).
    agent.wait_for_text(
        &format!("new PostgreSQL server {} ", pg.postmaster_pid()),
        std::time::Duration::from_secs(10),
    );
    let out = Command::new(pg.bin("psql"))
        .args(pg.conn_args())
        .args([
            "-X",
            "-q",
            "-d",
            "postgres",
            "-c",
            "select 'from the unit' as marker",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(std::time::Duration::from_millis(800));
    // SAFETY: kill(2) on the agent we started; systemd stops a unit with SIGTERM.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let run = agent.wait(std::time::Duration::from_secs(30));
    assert!(run.status.success(), "{run:?}");
    let spans = rx.spans();
    let marker: Vec<_> = spans
        .iter()
        .filter(|s| s.text() == "select ? as marker")
        .collect();
    let logged = pg
        .logged_statements()
        .into_iter()
        .filter(|(_, t)| t.contains("from the unit"))
        .count();
    assert_eq!(logged, 1);
    assert_eq!(
        marker.iter().filter(|s| s.kind == 3).count(),
        1,
        "the client's span: {spans:?}"
    );
    assert_eq!(
        marker.iter().filter(|s| s.kind == 2).count(),
        1,
        "the server's span: {spans:?}"
    );
}

/// `check` with the example config checks what the unit would run.
#[test]
fn check_with_the_example_config_passes() {
    dbtel_tests::require_root();
    let rx = dbtel_tests::Receiver::start();
    let _pg = dbtel_tests::Cluster::start();
    let config = deploy_dir().join("config.yaml").display().to_string();
    let run = dbtel_tests::run_agent_env(
        &["check", "--config", &config],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &rx.http_endpoint())],
        b"",
        std::time::Duration::from_secs(30),
    );
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("ok    host: libpq ")),
        "--all from the file: {}",
        run.stdout
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("ok    OTLP endpoint 127.0.0.1:")),
        "{}",
        run.stdout
    );
}

/// The agent's metric families as Prometheus names them: the histograms (each
/// with _bucket, _sum and _count series) and every other series.
const HISTOGRAMS: [&str; 6] = [
    "db_client_operation_duration",
    "db_client_response_returned_rows",
    "db_server_operation_duration",
    "db_query_duration",
    "db_transaction_duration",
    "db_lock_wait_duration",
];
const SERIES: [&str; 21] = [
    "db_transaction_retries_total",
    "db_contention_events_total",
    "db_transaction_active",
    "dbtel_slow_queries_total",
    "dbtel_n_plus_one_total",
    "dbtel_spans_made_total",
    "dbtel_spans_exported_total",
    "dbtel_spans_failed_total",
    "dbtel_spans_dropped_total",
    "dbtel_export_queue_spans",
    "dbtel_spans_spooled",
    "dbtel_events_read_total",
    "dbtel_events_lost_total",
    "dbtel_queries_incomplete_total",
    "dbtel_client_state_evicted_total",
    "dbtel_server_spans_total",
    "dbtel_traced_processes",
    "dbtel_probe_hits_total",
    "dbtel_agent_cpu_seconds_total",
    "dbtel_agent_memory_rss_bytes",
    "dbtel_agent_memory_max_rss_bytes",
];
/// Their labels, and the ones Prometheus adds (job, instance, le).
const LABELS: [&str; 21] = [
    "db_system_name",
    "db_namespace",
    "db_operation_name",
    "db_collection_name",
    "db_query_summary",
    "db_response_status_code",
    "db_transaction_outcome",
    "db_lock_outcome",
    "db_contention_type",
    "server_address",
    "server_port",
    "error_type",
    "reason",
    "what",
    "kind",
    "program",
    "otel_metric_overflow",
    "le",
    "job",
    "instance",
    "__name__",
];

fn is_metric(name: &str) -> bool {
    SERIES.contains(&name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|family| HISTOGRAMS.contains(&family))
        })
}

/// Takes characters while `more` holds for them.
fn take_while(first: char, chars: &mut Peekable<Chars>, more: fn(char) -> bool) -> String {
    let mut w = String::from(first);
    while let Some(c) = chars.next_if(|&c| more(c)) {
        w.push(c);
    }
    w
}

/// The identifiers of an expression, split by where they stand: label names
/// (inside `{}`, or in a by/without/on/ignoring/group_left/group_right list)
/// and the rest (metric names, functions, keywords). Strings and numbers,
/// durations included, are skipped.
fn identifiers(expr: &str) -> (Vec<String>, Vec<String>) {
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let (mut others, mut labels) = (Vec::new(), Vec::new());
    let mut chars = expr.chars().peekable();
    let (mut braces, mut in_list, mut grouping) = (0, false, false);
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                take_while(c, &mut chars, |c| c.is_ascii_alphanumeric() || c == '.');
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let w = take_while(c, &mut chars, |c| {
                    c.is_ascii_alphanumeric() || c == '_' || c == ':'
                });
                if braces > 0 || in_list {
                    labels.push(w);
                } else if GROUPING.contains(&w.as_str()) {
                    // Its list follows, after any spaces.
                    grouping = true;
                    continue;
                } else {
                    others.push(w);
                }
            }
            '{' => braces += 1,
            '}' => braces -= 1,
            '(' if grouping => in_list = true,
            ')' if in_list => in_list = false,
            _ => {}
        }
        if !c.is_whitespace() {
            grouping = false;
        }
    }
    (others, labels)
}

#[test]
fn identifiers_tell_metrics_from_labels() {
    let (others, labels) = identifiers(
        r#"histogram_quantile(0.95, sum by (le, db_lock_outcome) (rate(db_lock_wait_duration_bucket{db_system_name=~".*", x="a{b}"}[1m]))) / on(instance) group_left(job) up offset 5m"#,
    );
    assert_eq!(
        others,
        [
            "histogram_quantile",
            "sum",
            "rate",
            "db_lock_wait_duration_bucket",
            "up",
            "offset"
        ]
    );
    assert_eq!(
        labels,
        [
            "le",
            "db_lock_outcome",
            "db_system_name",
            "x",
            "instance",
            "job"
        ]
    );
}

/// Panics naming every metric or label the expressions use that the agent does not export.
fn assert_known_names(what: &str, exprs: &[(String, String)]) {
    let mut unknown = Vec::new();
    for (name, expr) in exprs {
        let (others, labels) = identifiers(expr);
        for m in others
            .iter()
            .filter(|w| w.starts_with("db_") || w.starts_with("dbtel_"))
        {
            if !is_metric(m) {
                unknown.push(format!("{name}: metric {m}"));
            }
        }
        for l in labels.iter().filter(|l| !LABELS.contains(&l.as_str())) {
            unknown.push(format!("{name}: label {l}"));
        }
    }
    assert!(
        unknown.is_empty(),
        "{what} uses names the agent does not export:\n{}",
        unknown.join("\n")
    );
}

/// Runs promtool (from the prometheus package) in deploy/prometheus/.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy_dir().join("prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("promtool (apt-get install prometheus): {e}"));
    assert!(
        out.status.success(),
        "promtool {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    promtool(&["check", "rules", "dbtel-rules.yml"]);
    // Each alert fires on the test's input series (and stays quiet on others).
    promtool(&["test", "rules", "dbtel-rules.test.yml"]);
    let test: Value = serde_yaml_ng::from_str(&read("prometheus/dbtel-rules.test.yml")).unwrap();
    let tested: BTreeSet<&str> = seq_at(&test, "tests")
        .iter()
        .flat_map(|t| seq_at(t, "alert_rule_test"))
        .filter(|a| !seq_at(a, "exp_alerts").is_empty())
        .map(|a| str_at(a, "alertname"))
        .collect();
    for (alert, _) in dbtel_tests::rule_exprs() {
        assert!(
            tested.contains(alert.as_str()),
            "no test makes {alert} fire"
        );
    }
}

#[test]
fn rules_use_the_agents_metrics() {
    let rules = dbtel_tests::rule_exprs();
    assert!(rules.len() >= 7, "{rules:?}");
    assert_known_names("deploy/prometheus/dbtel-rules.yml", &rules);
}

#[test]
fn every_dashboard_panel_queries_the_agents_metrics() {
    use serde_json::Value as Json;
    let panels = dbtel_tests::promql::dashboard_panels();
    assert!(panels.len() >= 20, "{} panels", panels.len());
    let mut exprs = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let queries: Vec<&str> = p["targets"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(|t| t["expr"].as_str())
            .filter(|e| !e.trim().is_empty())
            .collect();
        assert!(!queries.is_empty(), "panel {title} has no query");
        exprs.extend(queries.iter().map(|e| (title.to_string(), e.to_string())));
    }
    assert_known_names("deploy/grafana/dbtel.json", &exprs);

    // The variables the queries use, "All" meaning any value (or none).
    let dashboard: Json = serde_json::from_str(&read("grafana/dbtel.json")).unwrap();
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    for name in ["system", "namespace"] {
        let v = var(name);
        assert_eq!(v["allValue"], ".*", "{name}");
        assert_eq!(v["includeAll"], true, "{name}");
        assert_eq!(v["multi"], true, "{name}");
    }
}

/// The dashboard's queries, variables substituted, parse as PromQL: promtool
/// checks them as recording rules (JSON is YAML).
#[test]
fn dashboard_queries_parse() {
    let exprs = dbtel_tests::dashboard_exprs();
    assert!(exprs.iter().all(|e| !e.contains('$')), "{exprs:?}");
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": e }))
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.json");
    fs::write(&path, file.to_string()).unwrap();
    promtool(&["check", "rules", path.to_str().unwrap()]);
}
