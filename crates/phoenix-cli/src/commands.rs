//! What each command does: resolve the server, call the client, print the result.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;
use phoenix_client::{Client, CostPresets, FleetStatus};

use crate::cli::{Cli, Command, ContextCmd, CostCmd, FleetCmd, GlobalArgs, PresetsCmd};
use crate::config::{config_path, one_line, Config, DEFAULT_SERVER};
use crate::error::{CliError, CliResult, EXIT_USAGE};
use crate::output::{self, emit, fields, num, Table};

/// The server and token a command talks to, and where they came from.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: String,
    pub token: Option<String>,
    /// The context's refresh token, when its token came from the context (not the env).
    pub refresh_token: Option<String>,
    pub context: Option<String>,
    /// A CA certificate (PEM) trusted besides the web roots.
    pub ca_file: Option<String>,
}

/// `--ca-file`, else `$PHOENIX_CA_FILE` (not the context's).
fn ca_override(global: &GlobalArgs) -> Option<String> {
    global
        .ca_file
        .clone()
        .or_else(|| std::env::var("PHOENIX_CA_FILE").ok())
        .filter(|v| !v.is_empty())
}

/// `--server`, else `$PHOENIX_SERVER`, else the context's (`--context` or the current one),
/// else the default; the token is `$PHOENIX_TOKEN`, else the context's; the CA file is
/// `--ca-file`, else `$PHOENIX_CA_FILE`, else the context's.
pub fn resolve(global: &GlobalArgs, config: &Config) -> CliResult<Target> {
    let context = match &global.context {
        Some(name) => Some(config.context(name).ok_or_else(|| {
            CliError::usage(format!(
                "no context `{name}` in {}; add it with `phoenix context set {name} --server URL`",
                config_path().display()
            ))
        })?),
        None => config
            .current_context
            .as_deref()
            .and_then(|n| config.context(n)),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let server = global
        .server
        .clone()
        .or_else(|| env("PHOENIX_SERVER"))
        .or_else(|| context.map(|c| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let (token, refresh_token) = match env("PHOENIX_TOKEN") {
        Some(t) => (Some(t), None),
        None => (
            context.and_then(|c| c.token.clone()),
            context.and_then(|c| c.refresh_token.clone()),
        ),
    };
    Ok(Target {
        server: server.trim_end_matches('/').to_string(),
        token,
        refresh_token,
        context: context.map(|c| c.name.clone()),
        ca_file: ca_override(global).or_else(|| context.and_then(|c| c.ca_file.clone())),
    })
}

pub fn client(global: &GlobalArgs, target: &Target) -> CliResult<Client> {
    Ok(Client::with_ca_file(
        &target.server,
        target.token.clone(),
        Duration::from_secs(global.timeout.max(1)),
        target.ca_file.as_deref().map(Path::new),
    )?
    .with_refresh_token(target.refresh_token.clone()))
}

/// A CA file as a context stores it: checked (readable, PEM, with a certificate) and made
/// absolute, so the context works from any directory.
fn ca_file_for_context(ca_file: &str) -> CliResult<String> {
    let path = std::path::absolute(ca_file)
        .map_err(|e| CliError::usage(format!("CA file {ca_file}: {e}")))?;
    Client::with_ca_file(
        DEFAULT_SERVER,
        None,
        Duration::from_secs(1),
        Some(path.as_path()),
    )?;
    Ok(path.display().to_string())
}

/// After a command: if the client refreshed its tokens, write the new pair to the context
/// they came from (a refresh token is single use; the old one is spent).
fn keep_refreshed(path: &Path, target: &Target, c: &Client) {
    let Some(name) = &target.context else { return };
    if target.refresh_token.is_none() {
        return;
    }
    let now = c.tokens();
    if now.access == target.token && now.refresh == target.refresh_token {
        return;
    }
    let Ok(mut config) = Config::load(path) else {
        return;
    };
    if let Some(ctx) = config.context_mut(name) {
        ctx.token = now.access;
        ctx.refresh_token = now.refresh;
        if let Err(e) = config.save(path) {
            eprintln!("warning: cannot store the refreshed tokens: {}", e.message);
        }
    }
}

pub async fn run(cli: Cli) -> CliResult<u8> {
    let path = config_path();
    let mut config = Config::load(&path)?;
    let g = &cli.global;
    match cli.command {
        Command::Experiment(cmd) => {
            let target = resolve(g, &config)?;
            let c = client(g, &target)?;
            let out = crate::experiment::run(cmd, g, &c).await;
            keep_refreshed(&path, &target, &c);
            out
        }
        Command::Pipeline(cmd) => {
            let target = resolve(g, &config)?;
            let c = client(g, &target)?;
            let out = crate::pipeline::run(cmd, g, &c).await;
            keep_refreshed(&path, &target, &c);
            out
        }
        Command::Fleet(cmd) => {
            let target = resolve(g, &config)?;
            let c = client(g, &target)?;
            let status = c.fleet_status().await;
            keep_refreshed(&path, &target, &c);
            let status = status?;
            match cmd {
                FleetCmd::List => emit(g.output, &status.agents, || fleet_table(&status))?,
                FleetCmd::Status => emit(g.output, &status, || fleet_summary(&status))?,
            }
            Ok(0)
        }
        Command::Cost(CostCmd::Presets { action }) => {
            let target = resolve(g, &config)?;
            let c = client(g, &target)?;
            let presets = match action.unwrap_or(PresetsCmd::Get) {
                PresetsCmd::Get => c.cost_presets().await,
                PresetsCmd::Set { file } => {
                    let mut body = read_spec(&file)?;
                    if body.is_array() {
                        body = serde_json::json!({ "presets": body });
                    }
                    c.put_cost_presets_raw(&body).await
                }
            };
            keep_refreshed(&path, &target, &c);
            let presets = presets?;
            emit(g.output, &presets, || presets_table(&presets))?;
            Ok(0)
        }
        Command::Context(cmd) => context(cmd, g, &mut config, &path),
        Command::Recommendations(cmd) => {
            let c = client(g, &resolve(g, &config)?)?;
            crate::recommendations::recommendations(cmd, g, &c).await
        }
        Command::Cardinality(args) => {
            let c = client(g, &resolve(g, &config)?)?;
            crate::recommendations::cardinality(args, g, &c).await
        }
        Command::Cost(CostCmd::Flow {
            filter,
            preset,
            experiment,
        }) => {
            let c = client(g, &resolve(g, &config)?)?;
            crate::recommendations::cost_flow(filter, preset, experiment, g, &c).await
        }
        Command::Ui { no_open } => {
            let target = resolve(g, &config)?;
            let url = format!("{}/", target.server);
            output::print_out(&format!("{url}\n"));
            if !no_open {
                if let Some(opener) = find_on_path("xdg-open") {
                    let _ = std::process::Command::new(opener)
                        .arg(&url)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn();
                }
            }
            Ok(0)
        }
        Command::Version => version(g, &config).await,
        Command::Login {
            username,
            password_stdin,
            token,
        } => login(g, &mut config, &path, username, password_stdin, token).await,
        Command::Logout => {
            let name = context_for_write(g, &mut config)?;
            let ctx = config.context(&name).cloned();
            if let Some(ctx) = ctx.filter(|c| c.refresh_token.is_some()) {
                // A password login: end the session on the server too.
                let ca_file = ca_override(g).or_else(|| ctx.ca_file.clone());
                let c = Client::with_ca_file(
                    &ctx.server,
                    ctx.token.clone(),
                    Duration::from_secs(g.timeout.max(1)),
                    ca_file.as_deref().map(Path::new),
                )?
                .with_refresh_token(ctx.refresh_token.clone());
                if let Err(e) = c.logout().await {
                    eprintln!("warning: the server did not end the session: {e}");
                }
            }
            if let Some(c) = config.context_mut(&name) {
                c.token = None;
                c.refresh_token = None;
                c.username = None;
            }
            config.save(&path)?;
            eprintln!("logged out: tokens removed from context `{name}`");
            Ok(0)
        }
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "phoenix", &mut out);
            output::print_out(&String::from_utf8_lossy(&out));
            Ok(0)
        }
        Command::Plugin(args) => plugin(args, &resolve(g, &config)?),
    }
}

fn read_stdin_line(what: &str) -> CliResult<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::usage(format!("cannot read the {what} from stdin: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// `phoenix login`: a password login (tokens from the API) or a given token (API key).
async fn login(
    g: &GlobalArgs,
    config: &mut Config,
    path: &Path,
    username: Option<String>,
    password_stdin: bool,
    token: Option<String>,
) -> CliResult<u8> {
    if let Some(token) = token {
        let token = match token.as_str() {
            "-" => read_stdin_line("token")?.trim().to_string(),
            t => t.trim().to_string(),
        };
        if token.is_empty() {
            return Err(CliError::usage("the token is empty"));
        }
        let name = context_for_write(g, config)?;
        if let Some(c) = config.context_mut(&name) {
            c.token = Some(token);
            c.refresh_token = None;
            c.username = None;
        }
        config.save(path)?;
        eprintln!("token stored in context `{name}` ({})", path.display());
        return Ok(0);
    }
    let interactive = std::io::stdin().is_terminal();
    let username = match username {
        Some(u) => u,
        None if interactive && !password_stdin => {
            eprint!("username: ");
            read_stdin_line("username")?.trim().to_string()
        }
        None => {
            return Err(CliError::usage(
                "give --username (and --password-stdin to read the password from stdin), or --token for an API key",
            ))
        }
    };
    if username.is_empty() {
        return Err(CliError::usage("the username is empty"));
    }
    let password = if password_stdin {
        read_stdin_line("password")?
    } else if interactive {
        rpassword::prompt_password(format!("password for {username}: "))
            .map_err(|e| CliError::usage(format!("cannot read the password: {e}")))?
    } else {
        return Err(CliError::usage(
            "stdin is not a terminal: pass --password-stdin and the password on stdin",
        ));
    };
    let name = context_for_write(g, config)?;
    let target = resolve(g, config)?;
    let server = match &g.server {
        Some(s) => s.trim_end_matches('/').to_string(),
        None => target.server,
    };
    let ca_file = target
        .ca_file
        .as_deref()
        .map(ca_file_for_context)
        .transpose()?;
    let c = Client::with_ca_file(
        &server,
        None,
        Duration::from_secs(g.timeout.max(1)),
        ca_file.as_deref().map(Path::new),
    )?;
    let tokens = c.login(&username, &password).await?;
    if let Some(ctx) = config.context_mut(&name) {
        ctx.server = server.clone();
        if ca_file.is_some() {
            ctx.ca_file = ca_file;
        }
        ctx.token = Some(tokens.access_token);
        ctx.refresh_token = Some(tokens.refresh_token);
        ctx.username = Some(tokens.user.username.clone());
    }
    config.save(path)?;
    eprintln!(
        "logged in to {server} as {} ({}); tokens stored in context `{name}`",
        tokens.user.username, tokens.user.role
    );
    Ok(0)
}

/// The context `login`/`logout` write to: `--context`, else the current one, else a new
/// `default` context on `--server` (or the default server).
fn context_for_write(g: &GlobalArgs, config: &mut Config) -> CliResult<String> {
    if let Some(name) = &g.context {
        if config.context(name).is_none() {
            return Err(CliError::usage(format!(
                "no context `{name}`; add it with `phoenix context set {name} --server URL`"
            )));
        }
        return Ok(name.clone());
    }
    if let Some(name) = config
        .current_context
        .clone()
        .filter(|n| config.context(n).is_some())
    {
        return Ok(name);
    }
    let server = g.server.clone().unwrap_or_else(|| DEFAULT_SERVER.into());
    config.set_context("default", &server, None);
    config.current_context = Some("default".into());
    Ok("default".into())
}

fn context(cmd: ContextCmd, g: &GlobalArgs, config: &mut Config, path: &Path) -> CliResult<u8> {
    match cmd {
        ContextCmd::List => {
            let current = config.current_context.clone();
            let rows: Vec<serde_json::Value> = config
                .contexts
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "name": c.name,
                        "server": c.server,
                        "token": c.token.is_some(),
                        "ca_file": c.ca_file,
                        "current": current.as_deref() == Some(c.name.as_str()),
                    })
                })
                .collect();
            emit(g.output, &rows, || {
                let mut t = Table::new(&["CURRENT", "NAME", "SERVER", "TOKEN", "CA FILE"]);
                for c in &config.contexts {
                    let cur = current.as_deref() == Some(c.name.as_str());
                    t.row(vec![
                        if cur { "*".into() } else { String::new() },
                        c.name.clone(),
                        c.server.clone(),
                        if c.token.is_some() { "yes" } else { "no" }.into(),
                        c.ca_file.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                t.render()
            })?;
        }
        ContextCmd::Use { name } => {
            if config.context(&name).is_none() {
                return Err(CliError::usage(format!(
                    "no context `{name}`; add it with `phoenix context set {name} --server URL`"
                )));
            }
            config.current_context = Some(name.clone());
            config.save(path)?;
            eprintln!("switched to context `{name}`");
        }
        ContextCmd::Set { name, token } => {
            let server = match (&g.server, config.context(&name)) {
                (Some(s), _) => s.clone(),
                (None, Some(c)) => c.server.clone(),
                (None, None) => {
                    return Err(CliError::usage(format!(
                        "a new context needs a server: `phoenix context set {name} --server URL`"
                    )))
                }
            };
            // Reject what the client would reject later, now.
            Client::new(&server, None, Duration::from_secs(1))?;
            // `--ca-file ''` removes it; $PHOENIX_CA_FILE is not stored.
            let ca_file = match g.ca_file.as_deref() {
                Some("") => Some(None),
                Some(f) => Some(Some(ca_file_for_context(f)?)),
                None => None,
            };
            config.set_context(&name, server.trim_end_matches('/'), token);
            if let (Some(ca_file), Some(ctx)) = (ca_file, config.context_mut(&name)) {
                ctx.ca_file = ca_file;
            }
            config.save(path)?;
            eprintln!("context `{name}` set ({})", path.display());
        }
        ContextCmd::Delete { name } => {
            let before = config.contexts.len();
            config.contexts.retain(|c| c.name != name);
            if config.contexts.len() == before {
                return Err(CliError::usage(format!("no context `{name}`")));
            }
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            config.save(path)?;
            eprintln!("context `{name}` deleted");
        }
        ContextCmd::Current => match &config.current_context {
            Some(n) => output::print_out(&format!("{n}\n")),
            None => return Err(CliError::usage("no current context")),
        },
    }
    Ok(0)
}

async fn version(g: &GlobalArgs, config: &Config) -> CliResult<u8> {
    let target = resolve(g, config)?;
    let cli_version = env!("CARGO_PKG_VERSION");
    let c = client(g, &target)?;
    let health = c.health().await;
    let server = match &health {
        Ok(h) => {
            serde_json::json!({ "url": target.server, "status": h.status, "version": h.version })
        }
        Err(e) => {
            serde_json::json!({ "url": target.server, "status": "unreachable", "error": e.to_string() })
        }
    };
    let value = serde_json::json!({ "cli": { "version": cli_version }, "server": server });
    emit(g.output, &value, || {
        let server_line = match &health {
            Ok(h) => format!("{} ({}, version {})", target.server, h.status, h.version),
            Err(e) => format!("{} ({})", target.server, one_line(&e.to_string())),
        };
        fields(&[
            ("phoenix", cli_version.to_string()),
            ("server", server_line),
        ])
    })?;
    Ok(0)
}

/// Run `phoenix-NAME` from PATH with the resolved server and token in its environment.
fn plugin(args: Vec<std::ffi::OsString>, target: &Target) -> CliResult<u8> {
    let Some((name, rest)) = args.split_first() else {
        return Err(CliError::usage("missing command; see `phoenix --help`"));
    };
    let name = name.to_string_lossy();
    let exe = format!("phoenix-{name}");
    let Some(path) = find_on_path(&exe) else {
        return Err(CliError::usage(format!(
            "unknown command `{name}` (no plugin `{exe}` on PATH); see `phoenix --help`"
        )));
    };
    let mut cmd = std::process::Command::new(&path);
    cmd.args(rest).env("PHOENIX_SERVER", &target.server);
    match &target.token {
        Some(t) => cmd.env("PHOENIX_TOKEN", t),
        None => cmd.env_remove("PHOENIX_TOKEN"),
    };
    if let Some(ctx) = &target.context {
        cmd.env("PHOENIX_CONTEXT", ctx);
    }
    match &target.ca_file {
        Some(f) => cmd.env("PHOENIX_CA_FILE", f),
        None => cmd.env_remove("PHOENIX_CA_FILE"),
    };
    let status = cmd
        .status()
        .map_err(|e| CliError::usage(format!("cannot run {}: {e}", path.display())))?;
    Ok(match status.code() {
        Some(c) => u8::try_from(c).unwrap_or(1),
        None => 1,
    })
}

/// The first executable file called `name` in `$PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// A YAML or JSON file as a JSON value (YAML 1.2 reads JSON too). Errors are one line naming
/// the file.
pub fn read_spec(file: &Path) -> CliResult<serde_json::Value> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CliError::usage(format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?
    };
    let value: serde_json::Value = serde_yaml::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "{}: not valid YAML or JSON: {}",
            file.display(),
            one_line(&e.to_string())
        ))
    })?;
    if !(value.is_object() || value.is_array()) {
        return Err(CliError::new(
            EXIT_USAGE,
            format!("{}: expected a mapping of fields", file.display()),
        ));
    }
    Ok(value)
}

fn fleet_table(s: &FleetStatus) -> String {
    if s.agents.is_empty() {
        return "no agents enrolled\n".into();
    }
    let mut t = Table::new(&[
        "HOST",
        "HEALTH",
        "VERSION",
        "LAST SEEN",
        "TASKS",
        "CPU %",
        "RSS MB",
        "LABELS",
    ]);
    for a in &s.agents {
        t.row(vec![
            a.host_id.to_string(),
            serde_plain(&a.health),
            a.version.clone(),
            a.last_seen_seconds_ago
                .map_or_else(|| "never".into(), |s| format!("{s:.0}s ago")),
            a.running_tasks.to_string(),
            format!("{:.1}", a.resource_usage.cpu_percent),
            format!("{:.1}", a.resource_usage.memory_bytes as f64 / 1e6),
            a.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    t.render()
}

fn fleet_summary(s: &FleetStatus) -> String {
    let join = |m: &dyn Fn() -> Vec<String>| {
        let v = m();
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    fields(&[
        ("agents", s.total.to_string()),
        (
            "health",
            join(&|| {
                s.by_health
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect()
            }),
        ),
        (
            "versions",
            join(&|| s.versions.iter().map(|(k, v)| format!("{k} {v}")).collect()),
        ),
        (
            "task queue",
            join(&|| {
                s.task_queue
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect()
            }),
        ),
    ])
}

fn presets_table(p: &CostPresets) -> String {
    let mut t = Table::new(&[
        "NAME",
        "CURRENCY",
        "PER SERIES/MONTH",
        "PER M SAMPLES",
        "PER GB",
        "DESCRIPTION",
    ]);
    for p in &p.presets {
        t.row(vec![
            p.name.clone(),
            p.currency.clone(),
            num(Some(p.per_active_series_month), 4),
            num(Some(p.per_million_samples), 4),
            num(Some(p.per_gb), 4),
            p.description.clone(),
        ]);
    }
    t.render()
}

/// A unit enum's serde name (`rolled_back`, `healthy`).
pub fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// True when progress bars may be drawn.
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}
