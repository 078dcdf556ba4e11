//! `phoenix-load-ws` binary: N WebSocket clients on a running phoenix-api; memory per client
//! and broadcast latency (see `phoenix_loadtest::ws`).

use anyhow::Context;
use clap::Parser;

use phoenix_loadtest::cli::raise_fd_limit;
use phoenix_loadtest::ws::{run, WsArgs};

fn main() -> anyhow::Result<()> {
    let args = WsArgs::parse();
    args.check()?;
    match raise_fd_limit() {
        Ok(l) => {
            let needed = (args.clients + 64) as u64;
            if l.soft_now.is_some_and(|soft| soft < needed) {
                eprintln!(
                    "warning: {} clients need about {needed} file descriptors; the limit is {:?} and connections will fail",
                    args.clients, l.soft_now
                );
            }
        }
        Err(e) => eprintln!("warning: could not raise the open-file limit: {e}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let json_out = args.json_out.clone();
    let report = runtime.block_on(run(args))?;
    print!("{}", report.to_text());
    if let Some(path) = json_out {
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "report": report,
            "goals": report.goals(),
        }))?;
        std::fs::write(&path, json + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
