//! Tests of config.rs (kept apart: the module stays short to read).

use super::*;

/// A command shaped like the agent's: lists, flags, a ranged number, an
/// enum with a variable, options the exporter reads variables for, relations.
fn cmd(env_var: &str) -> Command {
    Command::new("agent")
        .arg(
            Arg::new("pids")
                .short('p')
                .long("pid")
                .value_name("PID")
                .action(ArgAction::Append)
                .value_parser(clap::value_parser!(u32))
                .conflicts_with("all"),
        )
        .arg(Arg::new("all").long("all").action(ArgAction::SetTrue))
        .arg(
            Arg::new("exe")
                .long("exe")
                .action(ArgAction::Append)
                .requires("all"),
        )
        .arg(
            Arg::new("port")
                .long("port")
                .action(ArgAction::Append)
                .value_parser(clap::value_parser!(u16))
                .requires("all"),
        )
        .arg(Arg::new("config").long("config"))
        .arg(
            Arg::new("print_config")
                .long("print-config")
                .action(ArgAction::SetTrue),
        )
        .arg(
            Arg::new("exporter")
                .long("exporter")
                .env(env_var.to_string())
                .value_parser(["otlp", "console", "none"])
                .default_value("otlp"),
        )
        .arg(Arg::new("otlp_endpoint").long("otlp-endpoint"))
        .arg(Arg::new("service_name").long("service-name"))
        .arg(
            Arg::new("raw_query_text")
                .long("raw-query-text")
                .action(ArgAction::SetTrue),
        )
        .arg(
            Arg::new("max_query_length")
                .long("max-query-length")
                .value_parser(clap::value_parser!(u32).range(16..=16382))
                .default_value("4096"),
        )
        .arg(
            Arg::new("catalog_period")
                .long("catalog-period")
                .value_parser(humantime::parse_duration)
                .default_value("2s"),
        )
        .arg(
            Arg::new("http_address")
                .long("http-address")
                .value_parser(clap::value_parser!(std::net::SocketAddr)),
        )
        .arg(Arg::new("command").last(true).num_args(0..))
}

fn parse_ok(text: &str) -> FileConfig {
    parse(
        Path::new("/etc/dbtel.yaml"),
        text,
        &cmd("DBTEL_TEST_UNUSED"),
    )
    .unwrap()
}

fn parse_err(text: &str) -> String {
    parse(
        Path::new("/etc/dbtel.yaml"),
        text,
        &cmd("DBTEL_TEST_UNUSED"),
    )
    .unwrap_err()
    .to_string()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn config_path_is_found_before_parsing() {
    let a = |s: &[&str]| s.iter().map(OsString::from).collect::<Vec<_>>();
    assert_eq!(
        config_path(&a(&["agent", "--pid", "1", "--config", "/a.yaml"])),
        Some("/a.yaml".into())
    );
    assert_eq!(
        config_path(&a(&["agent", "--config=/b.yaml", "--all"])),
        Some("/b.yaml".into())
    );
    assert_eq!(
        config_path(&a(&["agent", "--", "prog", "--config", "/c.yaml"])),
        None
    );
    assert_eq!(config_path(&a(&["agent", "--catalog-config", "/d"])), None);
    assert_eq!(config_path(&a(&["agent", "--config"])), None);
}

#[test]
fn keys_are_long_flags_with_underscores_or_dashes() {
    let f = parse_ok(
        "otlp_endpoint: http://collector:4318\nmax-query-length: 1024\nall: true\nexe: [\"/usr/bin/psql\", pgbench]\n\
         port: 5432\ncatalog_period: 500ms\nhttp_address: 127.0.0.1:9464\nraw_query_text: false\nservice_name: 123\n",
    );
    let want: BTreeMap<String, Vec<String>> = [
        ("otlp_endpoint", v(&["http://collector:4318"])),
        ("max_query_length", v(&["1024"])),
        ("all", v(&["true"])),
        ("exe", v(&["/usr/bin/psql", "pgbench"])),
        ("port", v(&["5432"])),
        ("catalog_period", v(&["500ms"])),
        ("http_address", v(&["127.0.0.1:9464"])),
        ("raw_query_text", v(&["false"])),
        ("service_name", v(&["123"])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(f.values, want);
    // The short-named argument is keyed by its long name; nulls and empty files set nothing.
    assert_eq!(
        parse_ok("pid: [1, 2]\nservice_name: ~\n").values,
        [("pids".to_string(), v(&["1", "2"]))].into()
    );
    assert!(parse_ok("").values.is_empty());
    assert!(parse_ok("# only a comment\n").values.is_empty());
}

#[test]
fn unknown_and_non_keys_are_refused_by_name() {
    assert_eq!(
        parse_err("otlp_endpoint: x\nbogus_option: 1\n"),
        "config /etc/dbtel.yaml: unknown key `bogus_option`"
    );
    for k in ["config", "print_config", "command", "help", "pids"] {
        assert_eq!(
            parse_err(&format!("{k}: x\n")),
            format!("config /etc/dbtel.yaml: unknown key `{k}`")
        );
    }
    let e = parse_err("password: hunter2\n");
    assert!(
        e.starts_with(
            "config /etc/dbtel.yaml: unknown key `password` (secrets never go in this file: "
        ) && !e.contains("hunter2"),
        "{e}"
    );
    assert_eq!(
        parse_err("all: true\n'all': false\n"),
        "config /etc/dbtel.yaml: duplicate entry with key \"all\""
    );
    assert_eq!(
        parse_err("http_address: 1.2.3.4:5\nhttp-address: 1.2.3.4:6\n"),
        "config /etc/dbtel.yaml: `http-address` given twice"
    );
    assert_eq!(
        parse_err("- a\n- b\n"),
        "config /etc/dbtel.yaml: expected a mapping of option names to values"
    );
    assert_eq!(
        parse_err("1: x\n"),
        "config /etc/dbtel.yaml: a key is not a name: 1"
    );
    assert_eq!(
        parse_err("all: [\n"),
        "config /etc/dbtel.yaml: did not find expected node content at line 2 column 1, while parsing a flow node"
    );
}

#[test]
fn wrong_types_name_the_key() {
    let e = |t: &str| {
        parse_err(t)
            .trim_start_matches("config /etc/dbtel.yaml: ")
            .to_string()
    };
    assert_eq!(e("all: yes\n"), "`all`: expected true or false, not yes");
    assert_eq!(
        e("raw_query_text: 1\n"),
        "`raw_query_text`: expected true or false, not 1"
    );
    assert_eq!(
        e("otlp_endpoint: [a, b]\n"),
        "`otlp_endpoint`: expected one value, not a list"
    );
    assert_eq!(
        e("service_name: {a: 1}\n"),
        "`service_name`: expected a value, not a mapping"
    );
    assert_eq!(
        e("service_name: true\n"),
        "`service_name`: expected a value, not true"
    );
    assert_eq!(e("exe: [[a]]\n"), "`exe`: expected a value, not a list");
    assert_eq!(
        e("max_query_length: lots\n"),
        "`max_query_length`: invalid value \"lots\": invalid digit found in string"
    );
    assert_eq!(
        e("max_query_length: 99999\n"),
        "`max_query_length`: invalid value \"99999\": 99999 is not in 16..=16382"
    );
    assert_eq!(
        e("port: [5432, 99999]\n"),
        "`port`: invalid value \"99999\": 99999 is not in 0..=65535"
    );
    assert_eq!(
        e("exporter: jaeger\n"),
        "`exporter`: invalid value \"jaeger\": expected one of otlp, console, none"
    );
    assert!(
        e("catalog_period: soon\n").starts_with("`catalog_period`: invalid value \"soon\": "),
        "{}",
        e("catalog_period: soon\n")
    );
    assert!(
        e("http_address: localhost\n").starts_with("`http_address`: invalid value \"localhost\": ")
    );
}

fn merged(file: &str, argv: &[&str], env_var: &str) -> (Command, ArgMatches, FileConfig) {
    let f = parse(Path::new("/f.yaml"), file, &cmd(env_var)).unwrap();
    let mut c = apply(cmd(env_var), &f, &no_env);
    let m = c.try_get_matches_from_mut(argv).unwrap();
    (c, m, f)
}

#[test]
fn flags_beat_environment_beats_file_beats_default() {
    // A variable of this test's own: tests run in threads of one process.
    let var = "DBTEL_TEST_CONFIG_EXPORTER";
    std::env::remove_var(var);
    let file = "exporter: console\nmax_query_length: 1024\nexe: [a, b]\nall: true\n";
    let (c, m, f) = merged(file, &["agent"], var);
    assert_eq!(m.get_one::<String>("exporter").unwrap(), "console");
    assert_eq!(source_of(&c, &m, Some(&f), "exporter"), Source::File);
    assert_eq!(*m.get_one::<u32>("max_query_length").unwrap(), 1024);
    assert!(m.get_flag("all"));
    assert_eq!(
        source_of(&c, &m, Some(&f), "catalog_period"),
        Source::Default
    );
    let (c, m, f) = merged(
        file,
        &["agent", "--max-query-length", "64", "--exe", "c"],
        var,
    );
    assert_eq!(*m.get_one::<u32>("max_query_length").unwrap(), 64);
    assert_eq!(
        source_of(&c, &m, Some(&f), "max_query_length"),
        Source::Flag
    );
    // A list given as flags replaces the file's, it does not add to it.
    assert_eq!(
        m.get_many::<String>("exe").unwrap().collect::<Vec<_>>(),
        ["c"]
    );

    std::env::set_var(var, "none");
    let (c, m, f) = merged(file, &["agent"], var);
    assert_eq!(m.get_one::<String>("exporter").unwrap(), "none");
    assert_eq!(
        source_of(&c, &m, Some(&f), "exporter"),
        Source::Env(var.into())
    );
    let (c, m, f) = merged(file, &["agent", "--exporter", "otlp"], var);
    assert_eq!(m.get_one::<String>("exporter").unwrap(), "otlp");
    assert_eq!(source_of(&c, &m, Some(&f), "exporter"), Source::Flag);
    std::env::remove_var(var);
}

#[test]
fn variables_the_exporter_reads_keep_the_file_out() {
    let f = parse(
        Path::new("/f.yaml"),
        "otlp_endpoint: http://file:4318\nservice_name: from-file\n",
        &cmd("X"),
    )
    .unwrap();
    let env = |k: &str| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env:4318".to_string()),
        "OTEL_RESOURCE_ATTRIBUTES" => Some("team=db,service.name=from-env".to_string()),
        _ => None,
    };
    let mut c = apply(cmd("X"), &f, &env);
    let m = c.try_get_matches_from_mut(["agent"]).unwrap();
    // Unset in clap: the exporter then reads the variables itself.
    assert_eq!(m.get_one::<String>("otlp_endpoint"), None);
    assert_eq!(m.get_one::<String>("service_name"), None);
    let out = render(&c, &m, Some(&f), &env);
    assert!(
        out.contains("\notlp_endpoint: http://env:4318  # env OTEL_EXPORTER_OTLP_ENDPOINT\n"),
        "{out}"
    );
    assert!(
        out.contains("\nservice_name: from-env  # env OTEL_RESOURCE_ATTRIBUTES\n"),
        "{out}"
    );
    // Without them the file's values hold; a flag beats both.
    let mut c = apply(cmd("X"), &f, &no_env);
    let m = c
        .try_get_matches_from_mut(["agent", "--service-name", "flag"])
        .unwrap();
    assert_eq!(
        m.get_one::<String>("otlp_endpoint").unwrap(),
        "http://file:4318"
    );
    assert_eq!(m.get_one::<String>("service_name").unwrap(), "flag");
    // A resource attribute other than service.name does not count.
    let other = |k: &str| (k == "OTEL_RESOURCE_ATTRIBUTES").then(|| "team=db".to_string());
    assert_eq!(read_by_exporter("service_name", &other), None);
}

#[test]
fn relations_hold_across_flags_and_file() {
    let check = |file: &str, argv: &[&str]| {
        let (c, m, f) = merged(file, argv, "DBTEL_TEST_UNUSED");
        check_relations(cmd("DBTEL_TEST_UNUSED"), &c, &m, &f).map_err(|e| match e {
            RelationError::File(e) => e.to_string(),
            RelationError::Flags(e) => format!("flags: {}", clap_message(&e)),
        })
    };
    check("all: true\nexe: [psql]\nport: [5432]\n", &["agent"]).unwrap();
    check("exe: [psql]\n", &["agent", "--all"]).unwrap();
    check("all: true\n", &["agent", "--exe", "psql", "--port", "5432"]).unwrap();
    check(
        "max_query_length: 100\n",
        &["agent", "--pid", "4", "--", "psql", "-c", "select 1"],
    )
    .unwrap();
    let e = check("exe: [psql]\n", &["agent"]).unwrap_err();
    assert!(
        e.starts_with("config /f.yaml: ") && e.contains("--all"),
        "{e}"
    );
    let e = check("all: true\n", &["agent", "--pid", "42"]).unwrap_err();
    assert!(
        e.starts_with("config /f.yaml: ")
            && e.contains("'--pid <PID>'")
            && e.contains("--all")
            && e.lines().count() == 1,
        "{e}"
    );
    // Broken by the flags alone: clap's error, as without a file.
    let e = check(
        "max_query_length: 100\n",
        &["agent", "--pid", "42", "--all"],
    )
    .unwrap_err();
    assert!(
        e.starts_with("flags: ") && e.contains("cannot be used with"),
        "{e}"
    );
}

#[test]
fn print_config_lists_every_option_with_its_source() {
    let (c, m, f) = merged(
        "max_query_length: 1024\nexe: [\"/usr/bin/psql\", \"*pg*\"]\nall: true\nservice_name: 'true'\n",
        &["agent", "--otlp-endpoint", "http://bob:hunter2@collector:4318/?key=k3y"],
        "DBTEL_TEST_UNUSED",
    );
    let env = |k: &str| match k {
        "OTEL_EXPORTER_OTLP_HEADERS" => Some("authorization=Bearer%20s3cr3t,x-team=db".to_string()),
        "PGPASSWORD" => Some("pgs3cret".to_string()),
        "PGHOST" => Some("/var/run/postgresql".to_string()),
        _ => None,
    };
    let out = render(&c, &m, Some(&f), &env);
    let want =
        "# dbtel-agent effective configuration: flags > environment > file /f.yaml > defaults
pid: []  # default
all: true  # file
exe: [/usr/bin/psql, '*pg*']  # file
port: []  # default
exporter: otlp  # default
otlp_endpoint: http://<redacted>@collector:4318/?<redacted>  # flag
service_name: 'true'  # file
raw_query_text: false  # default
max_query_length: 1024  # file
catalog_period: 2s  # default
http_address: null  # default
# environment read besides (secrets redacted):
#   OTEL_EXPORTER_OTLP_HEADERS=authorization=<redacted>,x-team=<redacted>
#   PGHOST=/var/run/postgresql
#   PGPASSWORD=<set>
";
    assert_eq!(out, want);
    for secret in ["hunter2", "k3y", "s3cr3t", "pgs3cret"] {
        assert!(!out.contains(secret), "{secret} leaked");
    }
    // The options part reads back as the same configuration.
    let back = parse(Path::new("/g.yaml"), &out, &cmd("DBTEL_TEST_UNUSED")).unwrap();
    assert_eq!(back.values["exe"], v(&["/usr/bin/psql", "*pg*"]));
    assert_eq!(back.values["service_name"], v(&["true"]));
    assert_eq!(back.values["max_query_length"], v(&["1024"]));
    assert!(!back.values.contains_key("http_address"));
}

#[test]
fn print_config_without_a_file() {
    let mut c = cmd("DBTEL_TEST_UNUSED");
    let m = c
        .try_get_matches_from_mut(["agent", "--pid", "7", "--raw-query-text"])
        .unwrap();
    let env = |k: &str| (k == "OTEL_USE_CONSOLE").then(|| "true".to_string());
    let out = render(&c, &m, None, &env);
    assert!(out.starts_with("# dbtel-agent effective configuration: flags > environment > defaults (no --config file)\n"));
    assert!(
        out.contains("\npid: [7]  # flag\n") && out.contains("\nraw_query_text: true  # flag\n"),
        "{out}"
    );
    assert!(
        out.contains("\nexporter: console  # env OTEL_USE_CONSOLE\n"),
        "{out}"
    );
}

#[test]
fn redaction() {
    assert_eq!(redact_url("http://collector:4318"), "http://collector:4318");
    assert_eq!(
        redact_url("https://user:pw@collector:4318/v1/traces"),
        "https://<redacted>@collector:4318/v1/traces"
    );
    assert_eq!(
        redact_url("https://a@b@collector/x?token=t#f"),
        "https://<redacted>@collector/x?<redacted>"
    );
    assert_eq!(redact_url("collector:4317"), "collector:4317");
    assert_eq!(
        redact_url("user:pw@collector:4317"),
        "<redacted>@collector:4317"
    );
    assert_eq!(
        redact_headers("api-key=abc, x-org = org%201"),
        "api-key=<redacted>,x-org=<redacted>"
    );
    assert_eq!(redact_headers("garbled"), "<redacted>");
}

#[test]
fn scalars_round_trip() {
    for (s, y) in [
        ("4096", "4096"),
        ("2s", "2s"),
        ("true", "'true'"),
        ("null", "'null'"),
        ("*pg*", "'*pg*'"),
        ("1.5", "'1.5'"),
        ("a: b", "'a: b'"),
    ] {
        assert_eq!(yaml_scalar(s), y);
        let back: Value = serde_yaml_ng::from_str(y).unwrap();
        assert_eq!(scalar(&back).unwrap(), s);
    }
}
