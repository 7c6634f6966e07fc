//! Tests of the command line (main.rs).
use clap::CommandFactory;

/// Out of range, the error gives the range in the flag's own unit (clap's
/// ranged parser printed `0 is not in 100..18446744073709551615`).
#[test]
fn ranged_flags_say_their_range() {
    use crate::cli_input::{parse_export_interval, parse_max_query_length};
    assert_eq!(parse_export_interval("100"), Ok(100));
    assert_eq!(
        parse_export_interval("0"),
        Err("at least 100 milliseconds".into())
    );
    assert!(parse_export_interval("1s")
        .unwrap_err()
        .contains("milliseconds"));
    assert_eq!(parse_max_query_length("16"), Ok(16));
    assert_eq!(parse_max_query_length("16382"), Ok(16382));
    for bad in ["15", "16383", "x"] {
        assert!(
            parse_max_query_length(bad)
                .unwrap_err()
                .ends_with("is not a length from 16 to 16382 bytes"),
            "{bad}"
        );
    }
    let err = super::Cli::command()
        .try_get_matches_from(["dbtel-agent", "--spool-max-size", "64MiB", "--pid", "1"])
        .unwrap_err();
    assert!(err.to_string().contains("--spool-dir <DIR>"), "{err}");
}

/// A flattened flag group's doc comment once took the place of the agent's own
/// description at the top of `--help`.
#[test]
fn help_opens_with_what_the_agent_does() {
    let mut cmd = super::Cli::command();
    let help = cmd.render_help().to_string();
    assert!(
        help.starts_with("Traces PostgreSQL and MySQL/MariaDB clients and servers"),
        "{help}"
    );
    let check = cmd
        .find_subcommand_mut("check")
        .unwrap()
        .render_help()
        .to_string();
    assert!(check.starts_with("Would tracing work here?"), "{check}");
    cmd.debug_assert();
}
