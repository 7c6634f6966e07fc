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
    (
        "otlp_endpoint",
        &[
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ],
    ),
    (
        "service_name",
        &["OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"],
    ),
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
    let text =
        std::fs::read_to_string(path).with_context(|| format!("config {}", path.display()))?;
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
        let Value::String(key) = k else {
            bail!("config {at}: a key is not a name: {}", yaml_line(&k))
        };
        let arg = find_arg(cmd, &key).ok_or_else(|| {
            let hint = if ["password", "header", "secret", "token"].iter().any(|w| key.to_ascii_lowercase().contains(w)) {
                " (secrets never go in this file: PGPASSWORD, PGPASSFILE or --catalog-config for the catalog, OTEL_EXPORTER_OTLP_HEADERS for the exporter)"
            } else {
                ""
            };
            anyhow!("config {at}: unknown key `{key}`{hint}")
        })?;
        let id = arg.get_id().as_str().to_string();
        let Some(vals) = values_of(arg, &v).map_err(|e| anyhow!("config {at}: `{key}`: {e}"))?
        else {
            continue;
        };
        if values.insert(id, vals).is_some() {
            bail!("config {at}: `{key}` given twice");
        }
    }
    Ok(FileConfig {
        path: path.to_path_buf(),
        values,
    })
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
        Value::Sequence(items) if is_list(arg) => {
            items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?
        }
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
    let probe = Command::new("config")
        .no_binary_name(true)
        .color(clap::ColorChoice::Never)
        .arg(
            Arg::new("v")
                .long("v")
                .action(ArgAction::Set)
                .allow_hyphen_values(true)
                .value_parser(arg.get_value_parser().clone()),
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
    serde_yaml_ng::to_string(v)
        .map(|s| s.trim_end().replace('\n', " "))
        .unwrap_or_else(|_| "?".into())
}

/// The variable that keeps the file's value of `id` out, and its value (for
/// the two options the exporter reads variables for itself).
fn read_by_exporter(id: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
    let (_, vars) = READ_BY_EXPORTER.iter().find(|(i, _)| *i == id)?;
    vars.iter().find_map(|var| {
        let v = env(var).filter(|v| !v.is_empty())?;
        if *var == "OTEL_RESOURCE_ATTRIBUTES" {
            // Only its service.name entry counts.
            let name = v
                .split(',')
                .find_map(|kv| kv.trim().strip_prefix("service.name="))?
                .to_string();
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
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().as_str().to_string())
        .collect();
    for id in ids {
        cmd = cmd.mut_arg(id, |a| {
            a.requires(Resettable::Reset)
                .conflicts_with(Resettable::Reset)
        });
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
    let env_name = || {
        cmd.get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    };
    match m.value_source(id) {
        Some(ValueSource::CommandLine) => Source::Flag,
        Some(ValueSource::EnvVariable) => Source::Env(env_name().unwrap_or_default()),
        _ if file.is_some_and(|f| f.values.contains_key(id))
            && m.value_source(id) == Some(ValueSource::DefaultValue) =>
        {
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
/// flag, a variable or the file, all as flags; when that fails, those from
/// flags and variables alone tell whose error it is.
pub fn check_relations(
    fresh: Command,
    cmd: &Command,
    m: &ArgMatches,
    file: &FileConfig,
) -> Result<(), RelationError> {
    let mut flags = vec![OsString::from(fresh.get_name().to_string())];
    let mut from_file = Vec::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let (Some(long), false) = (arg.get_long(), arg.is_positional()) else {
            continue;
        };
        let argv = match source_of(cmd, m, Some(file), id) {
            _ if NOT_KEYS.contains(&id) => continue,
            Source::Default => continue,
            Source::File => &mut from_file,
            Source::Flag | Source::Env(_) => &mut flags,
        };
        let raw: Vec<String> = m
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if is_flag(arg) {
            if raw.iter().any(|v| v == "true") {
                argv.push(format!("--{long}").into());
            }
        } else {
            argv.extend(raw.iter().map(|v| OsString::from(format!("--{long}={v}"))));
        }
    }
    let mut all = flags.clone();
    all.extend(from_file);
    let Err(e) = fresh
        .clone()
        .color(clap::ColorChoice::Never)
        .try_get_matches_from(all)
    else {
        return Ok(());
    };
    // The file may satisfy a `requires` the flags alone do not, never the reverse.
    fresh
        .try_get_matches_from(&flags)
        .map_err(RelationError::Flags)?;
    Err(RelationError::File(anyhow!(
        "config {}: {} (flags, environment and file together)",
        file.path.display(),
        clap_message(&e)
    )))
}

/// A clap error's message on one line (without `error: ` and the usage).
fn clap_message(e: &clap::Error) -> String {
    let s = e.to_string();
    let lines: Vec<&str> = s
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    lines.join(" ").trim_start_matches("error: ").to_string()
}

/// The effective configuration as YAML, each option with where its value came
/// from, then the variables read besides (secrets redacted). The options part
/// reads back as a config file.
pub fn render(
    cmd: &Command,
    m: &ArgMatches,
    file: Option<&FileConfig>,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
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
        let Some(long) = arg
            .get_long()
            .filter(|_| !arg.is_positional() && !NOT_KEYS.contains(&id))
        else {
            continue;
        };
        let key = long.replace('-', "_");
        let mut vals: Vec<String> = m
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let mut source = source_of(cmd, m, file, id);
        if source != Source::Flag {
            if let Some((var, v)) = read_by_exporter(id, env) {
                (vals, source) = (vec![v], Source::Env(var));
            }
        }
        if id == "exporter"
            && env("OTEL_USE_CONSOLE").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
        {
            (vals, source) = (
                vec!["console".into()],
                Source::Env("OTEL_USE_CONSOLE".into()),
            );
        }
        if id == "otlp_endpoint" {
            vals = vals.iter().map(|v| redact_url(v)).collect();
        }
        let value = if is_flag(arg) {
            vals.first().cloned().unwrap_or_else(|| "false".into())
        } else if is_list(arg) {
            format!(
                "[{}]",
                vals.iter()
                    .map(|v| yaml_scalar(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            vals.first()
                .map_or_else(|| "null".to_string(), |v| yaml_scalar(v))
        };
        let source = match source {
            Source::Flag => "flag".to_string(),
            Source::Env(var) => format!("env {var}"),
            Source::File => "file".to_string(),
            Source::Default => "default".to_string(),
        };
        let _ = writeln!(out, "{key}: {value}  # {source}");
    }
    let shown: Vec<(&str, String)> = SHOWN_ENV
        .iter()
        .filter_map(|var| Some((*var, env(var)?)))
        .collect();
    if !shown.is_empty() {
        out += "# environment read besides (secrets redacted):\n";
        for (var, v) in shown {
            let v = match var {
                "PGPASSWORD" => "<set>".to_string(),
                "OTEL_EXPORTER_OTLP_HEADERS" | "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => {
                    redact_headers(&v)
                }
                "OTEL_EXPORTER_OTLP_ENDPOINT" | "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => {
                    redact_url(&v)
                }
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
    serde_yaml_ng::to_string(&Value::String(s.to_string()))
        .map(|y| y.trim_end().to_string())
        .unwrap_or_else(|_| format!("{s:?}"))
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
#[path = "config_tests.rs"]
mod tests;
