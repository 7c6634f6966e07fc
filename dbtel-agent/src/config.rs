//! `--config FILE`: the agent's options from a YAML file, and `--print-config`.
//!
//! The file's keys are the long flag names (`otlp_endpoint` or `otlp-endpoint`).
//! Its values become the clap arguments' default values, so clap's own order —
//! command line, then the argument's `env` variable, then its default — gives
//! flags > environment > file > built-in default. Two options have variables
//! that the exporter reads itself rather than through clap (the OTLP endpoint,
//! the service name): when such a variable is set the file's value is left out,
//! so the variable wins there too. Defaults take no part in clap's `requires`
//! and `conflicts_with` checks, so the merged options are checked again
//! ([`check_relations`]) as if every one had been given as a flag.
//!
//! Pure apart from reading the file: the environment comes in as a function.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context};
use clap::{
    builder::Resettable,
    error::{ContextKind, ContextValue},
    parser::ValueSource,
    Arg, ArgAction, ArgMatches, Command,
};
use serde_yaml_ng::Value;

/// Arguments that are no file keys (and are not printed).
const NOT_KEYS: &[&str] = &["config", "print_config", "help", "version"];

/// Options whose variables the exporter reads itself (clap has no `env` for
/// them): when one is set, it wins over the file.
const READ_BY_EXPORTER: &[(&str, &[&str])] = &[
    ("otlp_endpoint", &["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]),
    ("service_name", &["OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"]),
];

/// Variables shown (redacted where secret) at the end of `--print-config`:
/// read by the exporter or the catalog connection, not options of their own.
const SHOWN_ENV: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_USE_CONSOLE",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGAPPNAME",
    "PGPASSFILE",
    "PGSSLMODE",
    "PGCONNECT_TIMEOUT",
    "RUST_LOG",
];

/// The options a config file set, checked against the command's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    pub path: PathBuf,
    /// Argument id → its values as they would be typed (a flag: `true`/`false`).
    pub values: BTreeMap<String, Vec<String>>,
}

/// Where an option's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File,
    Default,
}

/// The `--config` value in `args` (program name first), `--config FILE` or
/// `--config=FILE`, looked for before clap parses anything; none after `--`.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    let mut found = None;
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        } else if s == "--config" {
            found = it.next().map(PathBuf::from);
        } else if let Some(v) = s.strip_prefix("--config=") {
            found = Some(PathBuf::from(v));
        }
    }
    found
}

/// Reads and checks a config file against `cmd`'s arguments.
pub fn load(path: &Path, cmd: &Command) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("config {}", path.display()))?;
    parse(path, &text, cmd)
}

/// Parses a config file's text: a mapping of option names to values.
pub fn parse(path: &Path, text: &str, cmd: &Command) -> anyhow::Result<FileConfig> {
    let at = path.display();
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| anyhow!("config {at}: {e}"))?;
    let map = match doc {
        Value::Mapping(m) => m,
        Value::Null => Default::default(),
        _ => bail!("config {at}: expected a mapping of option names to values"),
    };
    let mut values = BTreeMap::new();
    for (k, v) in map {
        let Value::String(key) = k else { bail!("config {at}: a key is not a name: {}", yaml_line(&k)) };
        let arg = find_arg(cmd, &key).ok_or_else(|| {
            let hint = if ["password", "header", "secret", "token"].iter().any(|w| key.to_ascii_lowercase().contains(w)) {
                " (secrets never go in this file: PGPASSWORD, PGPASSFILE or --catalog-config for the catalog, OTEL_EXPORTER_OTLP_HEADERS for the exporter)"
            } else {
                ""
            };
            anyhow!("config {at}: unknown key `{key}`{hint}")
        })?;
        let id = arg.get_id().as_str().to_string();
        let Some(vals) = values_of(arg, &v).map_err(|e| anyhow!("config {at}: `{key}`: {e}"))? else { continue };
        if values.insert(id, vals).is_some() {
            bail!("config {at}: `{key}` given twice");
        }
    }
    Ok(FileConfig { path: path.to_path_buf(), values })
}

/// The argument a file key names: its long flag, `_` and `-` alike.
fn find_arg<'a>(cmd: &'a Command, key: &str) -> Option<&'a Arg> {
    let long = key.replace('_', "-");
    cmd.get_arguments()
        .filter(|a| !NOT_KEYS.contains(&a.get_id().as_str()) && !a.is_positional())
        .find(|a| a.get_long() == Some(long.as_str()))
}

fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// A YAML value as the argument's values (None: null, meaning unset).
fn values_of(arg: &Arg, v: &Value) -> Result<Option<Vec<String>>, String> {
    let vals = match v {
        Value::Null => return Ok(None),
        Value::Bool(b) if is_flag(arg) => return Ok(Some(vec![b.to_string()])),
        _ if is_flag(arg) => return Err(format!("expected true or false, not {}", yaml_line(v))),
        Value::Sequence(items) if is_list(arg) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
        Value::Sequence(_) => return Err("expected one value, not a list".into()),
        v => vec![scalar(v)?],
    };
    for s in &vals {
        check_value(arg, s).map_err(|e| format!("invalid value {s:?}: {e}"))?;
    }
    Ok(Some(vals))
}

fn scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(_) => Err(format!("expected a value, not {}", yaml_line(v))),
        Value::Null => Err("expected a value, not null".into()),
        Value::Sequence(_) => Err("expected a value, not a list".into()),
        Value::Mapping(_) => Err("expected a value, not a mapping".into()),
        Value::Tagged(t) => Err(format!("expected a value, not a tagged value ({})", t.tag)),
    }
}

/// Runs one value through the argument's own value parser (on a command of
/// that argument alone: the real one's relations play no part here).
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    let probe = Command::new("config").no_binary_name(true).color(clap::ColorChoice::Never).arg(
        Arg::new("v").long("v").action(ArgAction::Set).allow_hyphen_values(true).value_parser(arg.get_value_parser().clone()),
    );
    let e = match probe.try_get_matches_from(["--v", value]) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    if let Some(src) = std::error::Error::source(&e) {
        return Err(src.to_string());
    }
    if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        return Err(format!("expected one of {}", valid.join(", ")));
    }
    Err(clap_message(&e))
}

fn yaml_line(v: &Value) -> String {
    serde_yaml_ng::to_string(v).map(|s| s.trim_end().replace('\n', " ")).unwrap_or_else(|_| "?".into())
}

/// The variable that keeps the file's value of `id` out, and its value (for
/// the two options the exporter reads variables for itself).
fn read_by_exporter(id: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
    let (_, vars) = READ_BY_EXPORTER.iter().find(|(i, _)| *i == id)?;
    vars.iter().find_map(|var| {
        let v = env(var).filter(|v| !v.is_empty())?;
        if *var == "OTEL_RESOURCE_ATTRIBUTES" {
            // Only its service.name entry counts.
            let name = v.split(',').find_map(|kv| kv.trim().strip_prefix("service.name="))?.to_string();
            return Some((var.to_string(), name));
        }
        Some((var.to_string(), v))
    })
}

/// `cmd` with the file's values as its arguments' defaults (except where a
/// variable the exporter reads is set).
pub fn apply(mut cmd: Command, file: &FileConfig, env: &dyn Fn(&str) -> Option<String>) -> Command {
    // Relations are checked afterwards (check_relations): clap holds a default
    // to satisfy no `requires` (`all: true` in the file, `--exe` as a flag).
    let ids: Vec<String> = cmd.get_arguments().map(|a| a.get_id().as_str().to_string()).collect();
    for id in ids {
        cmd = cmd.mut_arg(id, |a| a.requires(Resettable::Reset).conflicts_with(Resettable::Reset));
    }
    for (id, vals) in &file.values {
        if read_by_exporter(id, env).is_some() {
            continue;
        }
        let vals = vals.clone();
        cmd = cmd.mut_arg(id, move |a| a.default_values(vals));
    }
    cmd
}

/// The source of an option's value in `m` (parsed by a command built with [`apply`]).
pub fn source_of(cmd: &Command, m: &ArgMatches, file: Option<&FileConfig>, id: &str) -> Source {
    let env_name = || cmd.get_arguments().find(|a| a.get_id() == id).and_then(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned());
    match m.value_source(id) {
        Some(ValueSource::CommandLine) => Source::Flag,
        Some(ValueSource::EnvVariable) => Source::Env(env_name().unwrap_or_default()),
        _ if file.is_some_and(|f| f.values.contains_key(id)) && m.value_source(id) == Some(ValueSource::DefaultValue) => {
            Source::File
        }
        _ => Source::Default,
    }
}

/// A broken `requires` or `conflicts_with`.
#[derive(Debug)]
pub enum RelationError {
    /// Among the flags and variables alone: clap's own error, as without a file.
    Flags(clap::Error),
    /// Only with the file's options: one line naming the file.
    File(anyhow::Error),
}

/// Checks `requires` and `conflicts_with` over the merged options: `fresh`
/// (the command without file defaults) parses every option that came from a
/// flag or a variable, then those and the file's, all as flags.
pub fn check_relations(fresh: Command, cmd: &Command, m: &ArgMatches, file: &FileConfig) -> Result<(), RelationError> {
    let mut flags = vec![OsString::from(fresh.get_name().to_string())];
    let mut from_file = Vec::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let (Some(long), false) = (arg.get_long(), arg.is_positional()) else { continue };
        let argv = match source_of(cmd, m, Some(file), id) {
            _ if NOT_KEYS.contains(&id) => continue,
            Source::Default => continue,
            Source::File => &mut from_file,
            Source::Flag | Source::Env(_) => &mut flags,
        };
        let raw: Vec<String> = m.get_raw(id).into_iter().flatten().map(|v| v.to_string_lossy().into_owned()).collect();
        if is_flag(arg) {
            if raw.iter().any(|v| v == "true") {
                argv.push(format!("--{long}").into());
            }
        } else {
            argv.extend(raw.iter().map(|v| OsString::from(format!("--{long}={v}"))));
        }
    }
    fresh.clone().try_get_matches_from(&flags).map_err(RelationError::Flags)?;
    flags.extend(from_file);
    fresh.color(clap::ColorChoice::Never).try_get_matches_from(flags).map(|_| ()).map_err(|e| {
        RelationError::File(anyhow!("config {}: {} (flags, environment and file together)", file.path.display(), clap_message(&e)))
    })
}

/// A clap error's message on one line (without `error: ` and the usage).
fn clap_message(e: &clap::Error) -> String {
    let s = e.to_string();
    let lines: Vec<&str> = s.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    lines.join(" ").trim_start_matches("error: ").to_string()
}

/// The effective configuration as YAML, each option with where its value came
/// from, then the variables read besides (secrets redacted). The options part
/// reads back as a config file.
pub fn render(cmd: &Command, m: &ArgMatches, file: Option<&FileConfig>, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::from("# dbtel-agent effective configuration: flags > environment > ");
    match file {
        Some(f) => out += &format!("file {} > defaults\n", f.path.display()),
        None => out += "defaults (no --config file)\n",
    }
    // In declaration order (apply moves the arguments it changes to the end).
    let mut args: Vec<&Arg> = cmd.get_arguments().collect();
    args.sort_by_key(|a| a.get_display_order());
    for arg in args {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long().filter(|_| !arg.is_positional() && !NOT_KEYS.contains(&id)) else { continue };
        let key = long.replace('-', "_");
        let mut vals: Vec<String> = m.get_raw(id).into_iter().flatten().map(|v| v.to_string_lossy().into_owned()).collect();
        let mut source = source_of(cmd, m, file, id);
        if source != Source::Flag {
            if let Some((var, v)) = read_by_exporter(id, env) {
                (vals, source) = (vec![v], Source::Env(var));
            }
        }
        if id == "exporter" && env("OTEL_USE_CONSOLE").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1") {
            (vals, source) = (vec!["console".into()], Source::Env("OTEL_USE_CONSOLE".into()));
        }
        if id == "otlp_endpoint" {
            vals = vals.iter().map(|v| redact_url(v)).collect();
        }
        let value = if is_flag(arg) {
            vals.first().cloned().unwrap_or_else(|| "false".into())
        } else if is_list(arg) {
            format!("[{}]", vals.iter().map(|v| yaml_scalar(v)).collect::<Vec<_>>().join(", "))
        } else {
            vals.first().map_or_else(|| "null".to_string(), |v| yaml_scalar(v))
        };
        let source = match source {
            Source::Flag => "flag".to_string(),
            Source::Env(var) => format!("env {var}"),
            Source::File => "file".to_string(),
            Source::Default => "default".to_string(),
        };
        let _ = writeln!(out, "{key}: {value}  # {source}");
    }
    let shown: Vec<(&str, String)> = SHOWN_ENV.iter().filter_map(|var| Some((*var, env(var)?))).collect();
    if !shown.is_empty() {
        out += "# environment read besides (secrets redacted):\n";
        for (var, v) in shown {
            let v = match var {
                "PGPASSWORD" => "<set>".to_string(),
                "OTEL_EXPORTER_OTLP_HEADERS" | "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => redact_headers(&v),
                "OTEL_EXPORTER_OTLP_ENDPOINT" | "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => redact_url(&v),
                _ => v,
            };
            let _ = writeln!(out, "#   {var}={}", v.escape_debug());
        }
    }
    out
}

/// A value as a YAML scalar: numbers bare, strings quoted where YAML would
/// read them as something else.
fn yaml_scalar(s: &str) -> String {
    if s.parse::<i64>().is_ok() {
        return s.to_string();
    }
    serde_yaml_ng::to_string(&Value::String(s.to_string())).map(|y| y.trim_end().to_string()).unwrap_or_else(|_| format!("{s:?}"))
}

/// A URL without its userinfo (`user:password@`) or query string.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(i) => format!("<redacted>@{}", &authority[i + 1..]),
        None => authority.to_string(),
    };
    let path = match path.find('?') {
        Some(i) => format!("{}?<redacted>", &path[..i]),
        None => path.to_string(),
    };
    format!("{scheme}{authority}{path}")
}

/// OTLP headers (`k1=v1,k2=v2`) with every value redacted; names kept.
pub fn redact_headers(h: &str) -> String {
    h.split(',')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) => format!("{}=<redacted>", k.trim()),
            None => "<redacted>".to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command shaped like the agent's: lists, flags, a ranged number, an
    /// enum with a variable, options the exporter reads variables for, relations.
    fn cmd(env_var: &str) -> Command {
        Command::new("agent")
            .arg(Arg::new("pids").short('p').long("pid").value_name("PID").action(ArgAction::Append).value_parser(clap::value_parser!(u32)).conflicts_with("all"))
            .arg(Arg::new("all").long("all").action(ArgAction::SetTrue))
            .arg(Arg::new("exe").long("exe").action(ArgAction::Append).requires("all"))
            .arg(Arg::new("port").long("port").action(ArgAction::Append).value_parser(clap::value_parser!(u16)).requires("all"))
            .arg(Arg::new("config").long("config"))
            .arg(Arg::new("print_config").long("print-config").action(ArgAction::SetTrue))
            .arg(Arg::new("exporter").long("exporter").env(env_var.to_string()).value_parser(["otlp", "console", "none"]).default_value("otlp"))
            .arg(Arg::new("otlp_endpoint").long("otlp-endpoint"))
            .arg(Arg::new("service_name").long("service-name"))
            .arg(Arg::new("raw_query_text").long("raw-query-text").action(ArgAction::SetTrue))
            .arg(
                Arg::new("max_query_length")
                    .long("max-query-length")
                    .value_parser(clap::value_parser!(u32).range(16..=16382))
                    .default_value("4096"),
            )
            .arg(Arg::new("catalog_period").long("catalog-period").value_parser(humantime::parse_duration).default_value("2s"))
            .arg(Arg::new("http_address").long("http-address").value_parser(clap::value_parser!(std::net::SocketAddr)))
            .arg(Arg::new("command").last(true).num_args(0..))
    }

    fn parse_ok(text: &str) -> FileConfig {
        parse(Path::new("/etc/dbtel.yaml"), text, &cmd("DBTEL_TEST_UNUSED")).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse(Path::new("/etc/dbtel.yaml"), text, &cmd("DBTEL_TEST_UNUSED")).unwrap_err().to_string()
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
        assert_eq!(config_path(&a(&["agent", "--pid", "1", "--config", "/a.yaml"])), Some("/a.yaml".into()));
        assert_eq!(config_path(&a(&["agent", "--config=/b.yaml", "--all"])), Some("/b.yaml".into()));
        assert_eq!(config_path(&a(&["agent", "--", "prog", "--config", "/c.yaml"])), None);
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
        assert_eq!(parse_ok("pid: [1, 2]\nservice_name: ~\n").values, [("pids".to_string(), v(&["1", "2"]))].into());
        assert!(parse_ok("").values.is_empty());
        assert!(parse_ok("# only a comment\n").values.is_empty());
    }

    #[test]
    fn unknown_and_non_keys_are_refused_by_name() {
        assert_eq!(parse_err("otlp_endpoint: x\nbogus_option: 1\n"), "config /etc/dbtel.yaml: unknown key `bogus_option`");
        for k in ["config", "print_config", "command", "help", "pids"] {
            assert_eq!(parse_err(&format!("{k}: x\n")), format!("config /etc/dbtel.yaml: unknown key `{k}`"));
        }
        let e = parse_err("password: hunter2\n");
        assert!(e.starts_with("config /etc/dbtel.yaml: unknown key `password` (secrets never go in this file: ") && !e.contains("hunter2"), "{e}");
        assert_eq!(parse_err("all: true\n'all': false\n"), "config /etc/dbtel.yaml: duplicate entry with key \"all\"");
        assert_eq!(parse_err("http_address: 1.2.3.4:5\nhttp-address: 1.2.3.4:6\n"), "config /etc/dbtel.yaml: `http-address` given twice");
        assert_eq!(parse_err("- a\n- b\n"), "config /etc/dbtel.yaml: expected a mapping of option names to values");
        assert_eq!(parse_err("1: x\n"), "config /etc/dbtel.yaml: a key is not a name: 1");
        assert_eq!(
            parse_err("all: [\n"),
            "config /etc/dbtel.yaml: did not find expected node content at line 2 column 1, while parsing a flow node"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        let e = |t: &str| parse_err(t).trim_start_matches("config /etc/dbtel.yaml: ").to_string();
        assert_eq!(e("all: yes\n"), "`all`: expected true or false, not yes");
        assert_eq!(e("raw_query_text: 1\n"), "`raw_query_text`: expected true or false, not 1");
        assert_eq!(e("otlp_endpoint: [a, b]\n"), "`otlp_endpoint`: expected one value, not a list");
        assert_eq!(e("service_name: {a: 1}\n"), "`service_name`: expected a value, not a mapping");
        assert_eq!(e("service_name: true\n"), "`service_name`: expected a value, not true");
        assert_eq!(e("exe: [[a]]\n"), "`exe`: expected a value, not a list");
        assert_eq!(e("max_query_length: lots\n"), "`max_query_length`: invalid value \"lots\": invalid digit found in string");
        assert_eq!(e("max_query_length: 99999\n"), "`max_query_length`: invalid value \"99999\": 99999 is not in 16..=16382");
        assert_eq!(e("port: [5432, 99999]\n"), "`port`: invalid value \"99999\": 99999 is not in 0..=65535");
        assert_eq!(e("exporter: jaeger\n"), "`exporter`: invalid value \"jaeger\": expected one of otlp, console, none");
        assert!(e("catalog_period: soon\n").starts_with("`catalog_period`: invalid value \"soon\": "), "{}", e("catalog_period: soon\n"));
        assert!(e("http_address: localhost\n").starts_with("`http_address`: invalid value \"localhost\": "));
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
        assert_eq!(source_of(&c, &m, Some(&f), "catalog_period"), Source::Default);
        let (c, m, f) = merged(file, &["agent", "--max-query-length", "64", "--exe", "c"], var);
        assert_eq!(*m.get_one::<u32>("max_query_length").unwrap(), 64);
        assert_eq!(source_of(&c, &m, Some(&f), "max_query_length"), Source::Flag);
        // A list given as flags replaces the file's, it does not add to it.
        assert_eq!(m.get_many::<String>("exe").unwrap().collect::<Vec<_>>(), ["c"]);

        std::env::set_var(var, "none");
        let (c, m, f) = merged(file, &["agent"], var);
        assert_eq!(m.get_one::<String>("exporter").unwrap(), "none");
        assert_eq!(source_of(&c, &m, Some(&f), "exporter"), Source::Env(var.into()));
        let (c, m, f) = merged(file, &["agent", "--exporter", "otlp"], var);
        assert_eq!(m.get_one::<String>("exporter").unwrap(), "otlp");
        assert_eq!(source_of(&c, &m, Some(&f), "exporter"), Source::Flag);
        std::env::remove_var(var);
    }

    #[test]
    fn variables_the_exporter_reads_keep_the_file_out() {
        let f = parse(Path::new("/f.yaml"), "otlp_endpoint: http://file:4318\nservice_name: from-file\n", &cmd("X")).unwrap();
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
        assert!(out.contains("\notlp_endpoint: http://env:4318  # env OTEL_EXPORTER_OTLP_ENDPOINT\n"), "{out}");
        assert!(out.contains("\nservice_name: from-env  # env OTEL_RESOURCE_ATTRIBUTES\n"), "{out}");
        // Without them the file's values hold; a flag beats both.
        let mut c = apply(cmd("X"), &f, &no_env);
        let m = c.try_get_matches_from_mut(["agent", "--service-name", "flag"]).unwrap();
        assert_eq!(m.get_one::<String>("otlp_endpoint").unwrap(), "http://file:4318");
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
        check("max_query_length: 100\n", &["agent", "--pid", "4", "--", "psql", "-c", "select 1"]).unwrap();
        let e = check("exe: [psql]\n", &["agent"]).unwrap_err();
        assert!(e.starts_with("config /f.yaml: ") && e.contains("--all"), "{e}");
        let e = check("all: true\n", &["agent", "--pid", "42"]).unwrap_err();
        assert!(e.starts_with("config /f.yaml: ") && e.contains("'--pid <PID>'") && e.contains("--all") && e.lines().count() == 1, "{e}");
        // Broken by the flags alone: clap's error, as without a file.
        let e = check("max_query_length: 100\n", &["agent", "--pid", "42", "--all"]).unwrap_err();
        assert!(e.starts_with("flags: ") && e.contains("cannot be used with"), "{e}");
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
        let want = "# dbtel-agent effective configuration: flags > environment > file /f.yaml > defaults
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
        let m = c.try_get_matches_from_mut(["agent", "--pid", "7", "--raw-query-text"]).unwrap();
        let env = |k: &str| (k == "OTEL_USE_CONSOLE").then(|| "true".to_string());
        let out = render(&c, &m, None, &env);
        assert!(out.starts_with("# dbtel-agent effective configuration: flags > environment > defaults (no --config file)\n"));
        assert!(out.contains("\npid: [7]  # flag\n") && out.contains("\nraw_query_text: true  # flag\n"), "{out}");
        assert!(out.contains("\nexporter: console  # env OTEL_USE_CONSOLE\n"), "{out}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("http://collector:4318"), "http://collector:4318");
        assert_eq!(redact_url("https://user:pw@collector:4318/v1/traces"), "https://<redacted>@collector:4318/v1/traces");
        assert_eq!(redact_url("https://a@b@collector/x?token=t#f"), "https://<redacted>@collector/x?<redacted>");
        assert_eq!(redact_url("collector:4317"), "collector:4317");
        assert_eq!(redact_url("user:pw@collector:4317"), "<redacted>@collector:4317");
        assert_eq!(redact_headers("api-key=abc, x-org = org%201"), "api-key=<redacted>,x-org=<redacted>");
        assert_eq!(redact_headers("garbled"), "<redacted>");
    }

    #[test]
    fn scalars_round_trip() {
        for (s, y) in [("4096", "4096"), ("2s", "2s"), ("true", "'true'"), ("null", "'null'"), ("*pg*", "'*pg*'"), ("1.5", "'1.5'"), ("a: b", "'a: b'")] {
            assert_eq!(yaml_scalar(s), y);
            let back: Value = serde_yaml_ng::from_str(y).unwrap();
            assert_eq!(scalar(&back).unwrap(), s);
        }
    }
}
