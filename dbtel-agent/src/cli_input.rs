//! The command line's own value parsers and how its errors are told.

use std::ffi::OsString;

/// `--metric-export-interval`: a whole number of milliseconds, at least 100.
pub fn parse_export_interval(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(v) if v >= 100 => Ok(v),
        Ok(_) => Err("at least 100 milliseconds".into()),
        Err(_) => Err(format!("not a number of milliseconds: {s:?}")),
    }
}

/// `--max-query-length`: 16 to 16382 bytes (the kernel side's text buffer).
pub fn parse_max_query_length(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(v) if (16..=16382).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a length from 16 to 16382 bytes")),
    }
}

/// A value clap refused that came from an environment variable, not the
/// command line: named as the variable (clap names the flag, which the user
/// never gave).
pub fn env_value_error(cmd: &clap::Command, args: &[OsString], e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = flag.split_whitespace().next()?.strip_prefix("--")?;
    let given = args.iter().filter_map(|a| a.to_str()).any(|a| {
        a.strip_prefix("--")
            .is_some_and(|a| a == long || a.starts_with(&format!("{long}=")))
    });
    if given {
        return None;
    }
    let arg = std::iter::once(cmd)
        .chain(cmd.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))?;
    let var = arg.get_env()?.to_str()?;
    let value = std::env::var(var).ok()?;
    let why = match (e.get(ContextKind::ValidValue), e.kind()) {
        (Some(ContextValue::Strings(valid)), _) => format!("not one of {}", valid.join(", ")),
        (_, ErrorKind::ValueValidation) => {
            std::error::Error::source(e).map_or_else(|| "invalid".to_string(), |s| s.to_string())
        }
        _ => "invalid".to_string(),
    };
    // A parser's message may open with the value itself: said once.
    let why = why.strip_prefix(&format!("{value:?}: ")).unwrap_or(&why);
    Some(format!("{var}={value:?}: {why}"))
}

/// A bad config file stops the agent as a bad flag does: one line, status 2.
pub fn settings_error(e: anyhow::Error) -> ! {
    eprintln!("dbtel-agent: {e:#}");
    std::process::exit(2)
}
