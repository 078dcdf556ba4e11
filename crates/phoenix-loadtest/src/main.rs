//! `phoenix-load` binary: parse flags, raise the open-file limit, run the simulation, print the
//! report (and write it as JSON with `--json-out`).

use anyhow::Context;
use clap::Parser;

use phoenix_loadtest::cli::{raise_fd_limit, Args};
use phoenix_loadtest::sim;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = args.sim_config()?;

    // One long-poll connection per agent, plus the shared pool: raise the soft limit.
    match raise_fd_limit() {
        Ok(l) => {
            let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
            eprintln!(
                "open-file limit: soft {} -> {} (hard {})",
                show(l.soft_before),
                show(l.soft_now),
                show(l.hard)
            );
            let needed = (cfg.agents + cfg.max_in_flight + 64) as u64;
            if l.soft_now.is_some_and(|soft| soft < needed) {
                eprintln!(
                    "warning: {} agents need about {needed} file descriptors; the limit is lower and connections will fail",
                    cfg.agents
                );
            }
        }
        Err(e) => eprintln!("warning: could not raise the open-file limit: {e}"),
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let report = runtime.block_on(sim::run(cfg))?;
    print!("{}", report.to_text());
    if let Some(path) = &args.json_out {
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "report": report,
            "goals": report.goals(),
        }))?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
