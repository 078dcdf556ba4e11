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
    // "Usage: phoenix experiment list [OPTIONS]" -> "phoenix experiment list".
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
        .unwrap_or_else(|| "phoenix".into());
    eprintln!("error: {first}; see `{command} --help`");
    ExitCode::from(error::EXIT_USAGE)
}
