//! `phoenix`: the command line for the Phoenix control plane. Parses the command, resolves
//! which server and token to use (flag, environment, context), runs the command over
//! `phoenix-client`, and turns the outcome into one stderr line and an exit code.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

mod cli;
mod commands;
mod config;
mod error;
mod experiment;
mod output;
mod pipeline;
mod recommendations;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(error::EXIT_USAGE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.exit_code)
        }
    }
}

/// Help and version print as clap renders them; a usage error becomes one line naming the
/// command whose `--help` explains it, and exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { error::EXIT_USAGE } else { 0 });
        }
        _ => {}
    }
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("error: invalid usage")
        .trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "Usage: phoenix experiment list [OPTIONS]" -> "phoenix experiment list"; errors that
    // print no usage line name the subcommand the arguments reached.
    let command = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(|u| {
            u.split_whitespace()
                .take_while(|w| !w.starts_with(['[', '<', '-']))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| subcommand_path(std::env::args().skip(1)));
    eprintln!("error: {first}; see `{command} --help`");
    ExitCode::from(error::EXIT_USAGE)
}

/// The subcommands named on the command line (`phoenix experiment create`), skipping the
/// global options and their values.
fn subcommand_path(args: impl Iterator<Item = String>) -> String {
    use clap::CommandFactory;
    const GLOBAL_WITH_VALUE: [&str; 6] = [
        "--server",
        "--context",
        "-o",
        "--output",
        "--timeout",
        "--ca-file",
    ];
    let mut cmd = cli::Cli::command();
    let mut path = vec!["phoenix".to_string()];
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if arg.starts_with('-') {
            skip_value = GLOBAL_WITH_VALUE.contains(&arg.as_str());
            continue;
        }
        let Some(sub) = cmd.find_subcommand(&arg).cloned() else {
            break;
        };
        path.push(sub.get_name().to_string());
        cmd = sub;
    }
    path.join(" ")
}

#[cfg(test)]
mod tests {
    use super::subcommand_path;

    fn path(args: &[&str]) -> String {
        subcommand_path(args.iter().map(|a| a.to_string()))
    }

    /// clap's own consistency checks over every subcommand (duplicate names, conflicts):
    /// a mistake there is a panic at run time, not a compile error.
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
    }

    #[test]
    fn the_subcommand_path_skips_global_options() {
        assert_eq!(
            path(&[
                "--server",
                "http://x",
                "exp",
                "create",
                "--duration",
                "soon"
            ]),
            "phoenix experiment create"
        );
        assert_eq!(path(&["-o", "json", "fleet", "list"]), "phoenix fleet list");
        assert_eq!(path(&["nope"]), "phoenix");
    }
}
