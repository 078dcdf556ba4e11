//! The real `phoenix` binary against a real `phoenix-api` process on SQLite: every test
//! starts its own API (found like the end-to-end tests find it: build it first with
//! `cargo build -p phoenix-api --bin phoenix-api`) and its own config file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use phoenix_e2e::{api_on_sqlite, free_port, ApiProcess, ADMIN_PASSWORD, ADMIN_USER, ENROLL_TOKEN};
use serde_json::Value;

struct Env {
    api: ApiProcess,
    base: String,
    dir: tempfile::TempDir,
}

impl Env {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (api, _db) = rt.block_on(api_on_sqlite(dir.path(), &[]));
        let base = api.base();
        let env = Env { api, base, dir };
        // Every test's CLI is logged in, the way a user does it.
        let out = phoenix_with_stdin(
            &env.config(),
            &[
                "--server",
                env.base_str(),
                "login",
                "--username",
                ADMIN_USER,
                "--password-stdin",
            ],
            &[],
            &format!("{ADMIN_PASSWORD}\n"),
        );
        assert_ok(&out, &["login"]);
        env
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("cli/config.yaml")
    }

    /// `phoenix --server <api> ARGS`.
    fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["--server", self.base_str()];
        full.extend_from_slice(args);
        phoenix(&self.config(), &full, &[])
    }

    fn base_str(&self) -> &str {
        &self.base
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_ok(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        let text = self.ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    fn create(&self, name: &str, hosts: &str) -> String {
        let v = self.json(&[
            "experiment",
            "create",
            "--name",
            name,
            "--baseline",
            "baseline",
            "--candidate",
            "adaptive",
            "--hosts",
            hosts,
            "--duration",
            "10m",
        ]);
        v["id"].as_str().unwrap().to_string()
    }
}

fn phoenix(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix"));
    cmd.args(args)
        .env("PHOENIX_CONFIG", config)
        .env_remove("PHOENIX_SERVER")
        .env_remove("PHOENIX_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn phoenix_with_stdin(config: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phoenix"));
    cmd.args(args)
        .env("PHOENIX_CONFIG", config)
        .env_remove("PHOENIX_SERVER")
        .env_remove("PHOENIX_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn assert_ok(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "phoenix {args:?} failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// One line on stderr, starting `error: `.
fn assert_one_error_line(out: &Output) -> String {
    let err = stderr(out);
    assert_eq!(
        err.lines().count(),
        1,
        "expected one stderr line, got: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn create_from_flags_then_get_and_list_in_table_json_and_yaml() {
    let env = Env::start();
    let id = env.create("flags experiment", "h1,h2");

    let got = env.json(&["experiment", "get", &id]);
    assert_eq!(got["name"], "flags experiment");
    assert_eq!(got["phase"], "pending");
    assert_eq!(got["target_hosts"], serde_json::json!(["h1", "h2"]));
    assert_eq!(got["duration_seconds"], 600);
    assert_eq!(got["mode"], "shadow");

    let table = env.ok(&["experiment", "list"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("PHASE"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(row.contains(&id) && row.contains("pending") && row.contains("flags experiment"));

    let page = env.json(&["experiment", "list"]);
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], id.as_str());

    let yaml: Value = serde_yaml::from_str(&env.ok(&["experiment", "list", "-o", "yaml"])).unwrap();
    assert_eq!(yaml["items"][0]["id"], id.as_str());

    let detail = env.ok(&["experiment", "get", &id]);
    assert!(
        detail.contains("phase:") && detail.contains("pending"),
        "{detail}"
    );

    let none = env.json(&["experiment", "list", "--phase", "running"]);
    assert_eq!(none["total"], 0);
}

#[test]
fn create_from_a_yaml_spec_with_flags_overriding_it() {
    let env = Env::start();
    let spec = env.dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        "name: from yaml\nbaseline_pipeline: baseline\ncandidate_pipeline: topk\n\
         target_selector:\n  env: prod\nduration_seconds: 1800\nparameters:\n  k: 50\n",
    )
    .unwrap();
    let v = env.json(&[
        "experiment",
        "create",
        "-f",
        spec.to_str().unwrap(),
        "--name",
        "renamed",
    ]);
    assert_eq!(v["name"], "renamed");
    assert_eq!(v["candidate_pipeline"], "topk");
    assert_eq!(v["target_selector"]["env"], "prod");
    assert_eq!(v["duration_seconds"], 1800);
    assert_eq!(v["parameters"]["k"], 50);

    // Deleted while pending: gone afterwards.
    let id = v["id"].as_str().unwrap();
    env.ok(&["experiment", "delete", id]);
    let gone = env.run(&["experiment", "get", id]);
    assert_eq!(gone.status.code(), Some(1));

    // --start creates and starts in one command.
    let started = env.json(&[
        "experiment",
        "create",
        "--name",
        "at once",
        "--baseline",
        "baseline",
        "--candidate",
        "adaptive",
        "--hosts",
        "h1",
        "--start",
    ]);
    assert_eq!(started["experiment"]["phase"], "initializing");
}

#[test]
fn start_stop_and_the_events_they_leave() {
    let env = Env::start();
    let id = env.create("run me", "h1");

    let started = env.json(&["experiment", "start", &id]);
    assert_eq!(started["experiment"]["phase"], "initializing");
    assert!(!started["task_ids"].as_array().unwrap().is_empty());

    let status = env.ok(&["experiment", "status", &id]);
    assert!(status.contains("initializing"), "{status}");

    let stopped = env.ok(&["experiment", "stop", &id, "--reason", "enough"]);
    assert!(stopped.contains("is stopped"), "{stopped}");

    let events = env.json(&["experiment", "events", &id]);
    let phases: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["to_phase"].as_str())
        .collect();
    assert_eq!(phases, ["pending", "initializing", "stopped"], "{events}");
    let table = env.ok(&["experiment", "events", &id]);
    assert!(table.contains("initializing -> stopped"), "{table}");

    // A second stop is refused by the API: exit 1 and its message.
    let again = env.run(&["experiment", "stop", &id]);
    assert_eq!(again.status.code(), Some(1));
    let err = assert_one_error_line(&again);
    assert!(err.starts_with("error: phase_conflict: "), "{err}");
}

#[test]
fn watch_ends_with_exit_4_when_the_experiment_is_stopped() {
    let env = Env::start();
    let id = env.create("watched", "h1");
    env.ok(&["experiment", "start", &id]);
    let mut watch = Command::new(env!("CARGO_BIN_EXE_phoenix"))
        .args([
            "--server",
            env.base_str(),
            "experiment",
            "status",
            &id,
            "--watch",
            "--interval",
            "200ms",
        ])
        .env("PHOENIX_CONFIG", env.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut events = Command::new(env!("CARGO_BIN_EXE_phoenix"))
        .args([
            "--server",
            env.base_str(),
            "experiment",
            "events",
            &id,
            "--watch",
            "--interval",
            "200ms",
            "-o",
            "json",
        ])
        .env("PHOENIX_CONFIG", env.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(watch.try_wait().unwrap().is_none(), "watch ended early");
    env.ok(&["experiment", "rollback", &id, "--reason", "test"]);

    for child in [&mut watch, &mut events] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "watch did not end");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(4));
    }
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rolled_back"), "{text}");
    let out = events.wait_with_output().unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.last().unwrap()["to_phase"], "rolled_back");
    assert_eq!(lines.len(), 3);
}

/// `status --watch` follows the WebSocket: with a poll interval of an hour, only the socket
/// can notice the rollback in time. A stale access token is refreshed first.
#[test]
fn watch_follows_the_websocket_and_polls_when_it_is_refused() {
    let env = Env::start();
    let id = env.create("ws-watched", "h1");
    env.ok(&["experiment", "start", &id]);
    let watch = |config: &std::path::Path, interval: &str| {
        Command::new(env!("CARGO_BIN_EXE_phoenix"))
            .args([
                "--server",
                env.base_str(),
                "experiment",
                "status",
                &id,
                "--watch",
                "--interval",
                interval,
            ])
            .env("PHOENIX_CONFIG", config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A context whose access token the server no longer takes (as when it expired): the
    // first REST call refreshes it, and the watch still ends with the rollback.
    let stale = env.config().with_extension("stale.yaml");
    let yaml = std::fs::read_to_string(env.config()).unwrap();
    let ctx: Value = serde_yaml::from_str(&yaml).unwrap();
    let access = ctx["contexts"][0]["token"].as_str().unwrap().to_string();
    std::fs::write(&stale, yaml.replace(&access, "expired-token")).unwrap();
    let mut following = watch(&env.config(), "1h");
    let mut polling = watch(&stale, "200ms");
    // Both are watching once the experiment's history shows they had time to subscribe.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(following.try_wait().unwrap().is_none(), "watch ended early");
    env.ok(&["experiment", "rollback", &id, "--reason", "test"]);

    for child in [&mut following, &mut polling] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "watch did not end");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(4));
    }
    let out = following.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("following"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("rolled_back"));
    // The stale token was refreshed by the first REST call, and the watch followed the hub.
    let out = polling.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("rolled_back"));
}

#[test]
fn results_metrics_and_cost_of_an_experiment() {
    let env = Env::start();
    let id = env.create("judged", "h1");

    let results = env.json(&["experiment", "results", &id]);
    assert_eq!(results["experiment_id"], id.as_str());
    assert!(results["result"]["decision"].is_string(), "{results}");
    let text = env.ok(&["experiment", "results", &id]);
    assert!(text.contains("decision:"), "{text}");

    let kpis = env.json(&["experiment", "metrics", &id]);
    assert_eq!(kpis["experiment_id"], id.as_str());
    assert!(env
        .ok(&["experiment", "metrics", &id])
        .contains("reduction %"));

    let cost = env.json(&["experiment", "cost", &id, "--preset", "ingest"]);
    assert_eq!(cost["selected"]["preset"], "ingest");
    let table = env.ok(&["experiment", "cost", &id]);
    assert!(
        table.contains("PRESET") && table.contains("per-series"),
        "{table}"
    );

    let bad = env.run(&["experiment", "cost", &id, "--preset", "nope"]);
    assert_eq!(bad.status.code(), Some(1));
    assert_one_error_line(&bad);
}

#[test]
fn cost_presets_get_and_set_from_a_file() {
    let env = Env::start();
    let presets = env.json(&["cost", "presets"]);
    assert!(presets["presets"].as_array().unwrap().len() >= 3);
    let file = env.dir.path().join("presets.yaml");
    std::fs::write(
        &file,
        "- name: mine\n  currency: EUR\n  per_active_series_month: 0.01\n",
    )
    .unwrap();
    let set = env.json(&["cost", "presets", "set", "-f", file.to_str().unwrap()]);
    assert_eq!(set["presets"][0]["name"], "mine");
    let table = env.ok(&["cost", "presets", "get"]);
    assert!(table.contains("mine") && table.contains("EUR"), "{table}");
}

#[test]
fn fleet_list_shows_an_enrolled_agent() {
    let env = Env::start();
    assert!(env.ok(&["fleet", "list"]).contains("no agents"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/agent/enroll", env.api.base()))
            .json(&serde_json::json!({"host_id": "node-cli-1", "enrollment_token": ENROLL_TOKEN}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    });
    let table = env.ok(&["fleet", "list"]);
    assert!(
        table.contains("node-cli-1") && table.contains("HEALTH"),
        "{table}"
    );
    let agents = env.json(&["fleet", "list"]);
    assert_eq!(agents[0]["host_id"], "node-cli-1");
    let status = env.json(&["fleet", "status"]);
    assert_eq!(status["total"], 1);
    assert!(env.ok(&["fleet", "status"]).contains("agents:"));
}

#[test]
fn contexts_choose_the_server_and_carry_the_token() {
    let env = Env::start();
    // A config of its own (Env's is logged in already).
    let cfg = env.dir.path().join("contexts/config.yaml");
    let token = env.api.token.clone();
    let dead = format!("http://127.0.0.1:{}", free_port());
    assert_ok(
        &phoenix(&cfg, &["context", "set", "dead", "--server", &dead], &[]),
        &["context set dead"],
    );
    assert_ok(
        &phoenix(
            &cfg,
            &[
                "context",
                "set",
                "live",
                "--server",
                env.base_str(),
                "--token",
                &token,
            ],
            &[],
        ),
        &["context set live"],
    );
    // The first context set is current: unreachable.
    let out = phoenix(&cfg, &["experiment", "list"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    // $PHOENIX_SERVER wins over the context, --server over both.
    let out = phoenix(
        &cfg,
        &["experiment", "list"],
        &[
            ("PHOENIX_SERVER", env.base_str()),
            ("PHOENIX_TOKEN", &token),
        ],
    );
    assert_ok(&out, &["list via PHOENIX_SERVER"]);
    // Without a token the API refuses: one line, exit 1.
    let out = phoenix(
        &cfg,
        &["experiment", "list"],
        &[("PHOENIX_SERVER", env.base_str())],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = assert_one_error_line(&out);
    assert!(err.starts_with("error: unauthorized: "), "{err}");
    let out = phoenix(
        &cfg,
        &["--server", &dead, "experiment", "list"],
        &[("PHOENIX_SERVER", env.base_str())],
    );
    assert_eq!(out.status.code(), Some(3));

    assert_ok(&phoenix(&cfg, &["context", "use", "live"], &[]), &["use"]);
    let out = phoenix(&cfg, &["experiment", "list", "-o", "json"], &[]);
    assert_ok(&out, &["list via context"]);

    let list = phoenix(&cfg, &["context", "list"], &[]);
    let text = String::from_utf8_lossy(&list.stdout);
    let live = text.lines().find(|l| l.contains("live")).unwrap();
    assert!(live.starts_with('*') && live.contains("yes"), "{text}");

    // --context picks another one for one command.
    let out = phoenix(&cfg, &["--context", "dead", "fleet", "list"], &[]);
    assert_eq!(out.status.code(), Some(3));

    // logout removes the token, login stores one.
    assert_ok(&phoenix(&cfg, &["logout"], &[]), &["logout"]);
    let yaml = std::fs::read_to_string(&cfg).unwrap();
    assert!(!yaml.contains(&token), "{yaml}");
    assert_ok(
        &phoenix(&cfg, &["login", "--token", "new-token"], &[]),
        &["login"],
    );
    let yaml = std::fs::read_to_string(&cfg).unwrap();
    assert!(yaml.contains("new-token"), "{yaml}");

    let unknown = phoenix(&cfg, &["context", "use", "nope"], &[]);
    assert_eq!(unknown.status.code(), Some(2));
    assert_one_error_line(&unknown);
}

#[test]
fn a_plugin_on_path_runs_with_server_and_token() {
    let env = Env::start();
    let bin = env.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("phoenix-hello");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"server=$PHOENIX_SERVER token=$PHOENIX_TOKEN args=$*\"\nexit 7\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = phoenix(
        &env.config(),
        &["--server", env.base_str(), "hello", "a", "--flag"],
        &[("PATH", &path), ("PHOENIX_TOKEN", "tok")],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("server={} token=tok args=a --flag", env.api.base())
    );

    let missing = phoenix(&env.config(), &["nosuchplugin"], &[("PATH", &path)]);
    assert_eq!(missing.status.code(), Some(2));
    let err = assert_one_error_line(&missing);
    assert!(err.contains("phoenix-nosuchplugin"), "{err}");
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    let cfg = tempfile::tempdir().unwrap().path().join("c.yaml");
    for shell in ["bash", "zsh", "fish"] {
        let out = phoenix(&cfg, &["completion", shell], &[]);
        assert_ok(&out, &["completion", shell]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("phoenix") && text.contains("experiment"),
            "{shell}"
        );
    }
}

#[test]
fn an_unknown_id_exits_1_with_the_api_message() {
    let env = Env::start();
    let id = uuid::Uuid::new_v4().to_string();
    let out = env.run(&["experiment", "get", &id]);
    assert_eq!(out.status.code(), Some(1));
    let err = assert_one_error_line(&out);
    assert!(err.starts_with("error: not_found: "), "{err}");
}

#[test]
fn an_unreachable_server_exits_3() {
    let cfg = tempfile::tempdir().unwrap().path().join("c.yaml");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = phoenix(&cfg, &["--server", &dead, "experiment", "list"], &[]);
    assert_eq!(out.status.code(), Some(3));
    let err = assert_one_error_line(&out);
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn a_bad_flag_exits_2() {
    let cfg = tempfile::tempdir().unwrap().path().join("c.yaml");
    let out = phoenix(&cfg, &["experiment", "list", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = assert_one_error_line(&out);
    assert!(
        err.contains("--no-such-flag") && err.contains("phoenix experiment list --help"),
        "{err}"
    );
    for args in [
        &["experiment", "create", "--duration", "soon"][..],
        &["-o", "xml", "experiment", "list"],
        &["experiment", "get"],
        &["completion", "tcsh"],
    ] {
        let out = phoenix(&cfg, args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_one_error_line(&out);
    }
    // Help is not an error.
    let out = phoenix(&cfg, &["experiment", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("status"));
}

#[test]
fn an_invalid_spec_file_is_one_line_and_non_zero() {
    let env = Env::start();
    let spec = env.dir.path().join("bad.yaml");
    std::fs::write(&spec, "name: [unclosed\n  baseline: {\n").unwrap();
    let out = env.run(&["experiment", "create", "-f", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = assert_one_error_line(&out);
    assert!(err.contains("bad.yaml"), "{err}");

    let missing = env.run(&["experiment", "create", "-f", "/nonexistent/spec.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert_one_error_line(&missing);

    // Valid YAML the API refuses: exit 1 with the field named.
    std::fs::write(
        &spec,
        "name: x\nbaseline_pipeline: baseline\ncandidate_pipeline: adaptive\nduration_seconds: 0\n",
    )
    .unwrap();
    let refused = env.run(&["experiment", "create", "-f", spec.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let err = assert_one_error_line(&refused);
    assert!(err.contains("duration_seconds"), "{err}");
}

#[test]
fn version_reports_the_cli_and_the_server() {
    let env = Env::start();
    let v = env.json(&["version"]);
    assert_eq!(v["cli"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["server"]["status"], "ok");
    let cfg = env.config();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = phoenix(&cfg, &["--server", &dead, "version"], &[]);
    assert_ok(&out, &["version unreachable"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cannot reach"));
}

#[test]
fn ui_prints_the_dashboard_url() {
    let env = Env::start();
    let out = env.ok(&["ui", "--no-open"]);
    assert_eq!(out.trim(), format!("{}/", env.api.base()));
}

#[test]
fn pipeline_templates_render_validate_and_deploy() {
    let env = Env::start();
    let table = env.ok(&["pipeline", "templates"]);
    for name in [
        "baseline",
        "topk",
        "adaptive",
        "hybrid",
        "cardinality-cap",
        "errors-and-anomalies",
    ] {
        assert!(table.contains(name), "{name} missing:\n{table}");
    }
    let shown = env.ok(&["pipeline", "template", "topk"]);
    assert!(
        shown.contains("PARAMETER") && shown.contains("window"),
        "{shown}"
    );

    let yaml = env.ok(&["pipeline", "render", "topk", "-p", "k=7"]);
    assert!(yaml.contains("k: 7"), "{yaml}");
    let otel = env.ok(&["pipeline", "render", "adaptive", "--format", "otelcol"]);
    assert!(
        otel.contains("service:") && otel.contains("processors"),
        "{otel}"
    );

    let ok = env.ok(&["pipeline", "validate", "topk", "-p", "k=5"]);
    assert!(ok.starts_with("valid: processors topk"), "{ok}");
    // Out of range: the API's 400, one line, exit 1.
    let out = env.run(&["pipeline", "validate", "topk", "-p", "k=0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("parameters.k"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A malformed --param: a usage error, exit 2.
    let out = env.run(&["pipeline", "render", "topk", "-p", "k"]);
    assert_eq!(out.status.code(), Some(2));

    let d = env.json(&[
        "pipeline", "deploy", "topk", "--hosts", "h1,h2", "-p", "k=5", "--name", "cli",
    ]);
    assert_eq!(d["status"], "active");
    assert_eq!(d["by_status"]["pending"], 2);
    let id = d["id"].as_str().unwrap().to_string();
    let list = env.json(&["pipeline", "deployments"]);
    assert_eq!(list["total"], 1);
    let shown = env.ok(&["pipeline", "deployment", &id]);
    assert!(shown.contains("h1") && shown.contains("pending"), "{shown}");
    let w = env.json(&["pipeline", "withdraw", &id]);
    assert_eq!(w["status"], "withdrawn");
}

/// An agent's KPI batch carrying label statistics (built with the core types the agent
/// sends): `http_requests_total` with 40 pods × 5 paths in `shop/cart`.
fn batch_with_label_stats() -> serde_json::Value {
    use phoenix_core::labelstats::{
        DistinctSketch, LabelStat, LabelStatsReport, MetricLabelStats, SeriesGroup,
    };
    let sketch = |values: Vec<String>| {
        let mut s = DistinctSketch::new();
        for v in values {
            s.insert(&v);
        }
        s
    };
    let report = LabelStatsReport {
        breakdown_labels: vec!["namespace".into(), "service".into()],
        metrics: vec![MetricLabelStats {
            metric: "http_requests_total".into(),
            series: 200,
            labels: vec![
                LabelStat {
                    name: "pod".into(),
                    series: 200,
                    values: sketch((0..40).map(|p| format!("pod-{p}")).collect()),
                    // Without `pod`: the 5 paths.
                    without: sketch((0..5).map(|p| format!("/p{p}")).collect()),
                    top_values: vec![],
                },
                LabelStat {
                    name: "path".into(),
                    series: 200,
                    values: sketch((0..5).map(|p| format!("/p{p}")).collect()),
                    without: sketch((0..40).map(|p| format!("pod-{p}")).collect()),
                    top_values: vec![],
                },
            ],
            labels_cut: 0,
            groups: vec![SeriesGroup {
                values: vec!["shop".into(), "cart".into()],
                series: 200,
            }],
            groups_cut_series: 0,
        }],
        metrics_cut: 0,
        series_cut: 0,
    };
    let now = chrono::Utc::now();
    serde_json::json!({ "batches": [{
        "batch_id": uuid::Uuid::new_v4(),
        "variant": "baseline",
        "interval_start": now - chrono::Duration::seconds(10),
        "interval_end": now,
        "values": { "input_series": 200, "output_series": 200, "input_samples": 200, "output_samples": 200 },
        "details": { "metrics": [{ "metric": "http_requests_total", "input_series": 200, "output_series": 200 }] },
        "label_stats": report,
    }]})
}

#[test]
fn recommendations_list_and_apply_cardinality_and_cost_flow() {
    let env = Env::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let r: Value = http
            .post(format!("{}/api/v1/agent/enroll", env.api.base()))
            .json(&serde_json::json!({"host_id": "node-cli-1", "enrollment_token": ENROLL_TOKEN}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let secret = r["agent_secret"].as_str().unwrap();
        let res = http
            .post(format!("{}/api/v1/agent/metrics", env.api.base()))
            .header("x-agent-host-id", "node-cli-1")
            .bearer_auth(secret)
            .json(&batch_with_label_stats())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    });
    let list = env.json(&["recommendations", "list"]);
    // No query uploaded: dropping the metric (200 series) ranks before aggregating `pod`.
    assert_eq!(list["items"][0]["kind"], "drop");
    let first = &list["items"][1];
    assert_eq!(first["metric"], "http_requests_total");
    assert_eq!(first["without"][0], "pod");
    assert_eq!(first["estimate"]["series_saved"], 195);
    let table = env.ok(&["recommendations", "list", "--limit", "2"]);
    assert!(
        table.contains("SAVED") && table.contains("195") && table.contains("2 of"),
        "{table}"
    );
    let yaml: Value = serde_yaml::from_str(&env.ok(&["recs", "list", "-o", "yaml"])).unwrap();
    assert_eq!(yaml["items"][1]["id"], first["id"]);
    let id = first["id"].as_str().unwrap();
    let exp = env.json(&["recommendations", "apply", id, "--duration", "900"]);
    assert_eq!(exp["phase"], "pending");
    assert_eq!(exp["target_hosts"][0], "node-cli-1");
    assert_eq!(exp["duration_seconds"], 900);
    let unknown = env.run(&["recommendations", "apply", "rec-0123456789abcdef"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert_one_error_line(&unknown);

    let card = env.json(&["cardinality", "--namespace", "shop"]);
    assert_eq!(card["total_series"], 200);
    assert!(env.ok(&["cardinality"]).contains("pod=40"));
    let flow = env.json(&["cost", "flow", "--preset", "ingest"]);
    assert_eq!(flow["preset"], "ingest");
    assert_eq!(flow["series_in"], 200.0);
    assert!(env.ok(&["cost", "flow"]).contains("namespace:shop"));
    let bad = env.run(&["cardinality", "--limit", "0"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(assert_one_error_line(&bad).contains("limit"));
}

#[test]
fn login_with_a_password_refreshes_on_401_and_logout_ends_the_session() {
    let env = Env::start();
    let cfg = env.config();
    let context = |yaml: &str| -> Value {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        v["contexts"][0].clone()
    };
    let first = context(&std::fs::read_to_string(&cfg).unwrap());
    assert_eq!(first["username"], ADMIN_USER);
    let refresh = first["refresh_token"].as_str().unwrap().to_string();
    assert!(refresh.starts_with("phr_"), "{first}");
    // The context's server is enough now.
    let out = phoenix(&cfg, &["experiment", "list"], &[]);
    assert_ok(&out, &["list with the stored token"]);

    // An access token the server refuses (as an expired one would be): the CLI refreshes,
    // retries, and stores the new pair.
    let yaml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(first["token"].as_str().unwrap(), "expired-token");
    std::fs::write(&cfg, yaml).unwrap();
    let out = phoenix(&cfg, &["experiment", "list"], &[]);
    assert_ok(&out, &["list after a refresh"]);
    let second = context(&std::fs::read_to_string(&cfg).unwrap());
    assert_ne!(second["token"], "expired-token");
    assert_ne!(second["refresh_token"].as_str().unwrap(), refresh);

    // Logout ends the session on the server: the stored access token stops working.
    let access = second["token"].as_str().unwrap().to_string();
    assert_ok(&phoenix(&cfg, &["logout"], &[]), &["logout"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/api/v1/auth/me", env.base))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 401);
    let out = phoenix(&cfg, &["experiment", "list"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_error_line(&out);

    // A wrong password: one line, exit 1, nothing stored.
    let out = phoenix_with_stdin(
        &cfg,
        &["login", "--username", ADMIN_USER, "--password-stdin"],
        &[],
        "wrong-password\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = assert_one_error_line(&out);
    assert!(err.contains("invalid username or password"), "{err}");
    // No terminal and no --password-stdin: a usage error, not a hang.
    let out = phoenix(&cfg, &["login", "--username", ADMIN_USER], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_error_line(&out);
    // --token conflicts with --username.
    let out = phoenix(&cfg, &["login", "--username", "x", "--token", "y"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

/// A reverse proxy that does not pass WebSocket upgrades, as nginx's `proxy_pass` without
/// `proxy_set_header Upgrade/Connection`: each request is forwarded to `upstream` with the
/// hop-by-hop headers dropped, so an upgrade reaches the API as a plain GET. Its base URL.
async fn proxy_without_websockets(upstream: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(proxy_connection(socket, client.clone(), upstream.clone()));
        }
    });
    base
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-connection",
    "host",
];

/// Forward the connection's requests one by one (keep-alive) until the client leaves.
async fn proxy_connection(
    socket: tokio::net::TcpStream,
    client: reqwest::Client,
    upstream: String,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut socket = BufReader::new(socket);
    loop {
        let mut request_line = String::new();
        if socket.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let mut req = client.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{upstream}{target}"),
        );
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "content-length" {
                length = value.parse().unwrap_or(0);
                continue;
            }
            if !HOP_BY_HOP.contains(&name.as_str()) {
                req = req.header(name, value);
            }
        }
        let mut body = vec![0u8; length];
        if socket.read_exact(&mut body).await.is_err() {
            return;
        }
        let Ok(res) = req.body(body).send().await else {
            let _ = socket
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        };
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            res.status().as_u16(),
            res.status().canonical_reason().unwrap_or("")
        );
        for (name, value) in res.headers() {
            if !HOP_BY_HOP.contains(&name.as_str()) && name.as_str() != "content-length" {
                head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
            }
        }
        let body = res.bytes().await.unwrap_or_default();
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        // Head and body in one write, as the API itself sends a small answer.
        let mut answer = head.into_bytes();
        answer.extend_from_slice(&body);
        if socket.get_mut().write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Behind a proxy that does not pass WebSocket upgrades, the API answers the hub's upgrade
/// with 400: `--watch` says it falls back to polling, and still follows the experiment
/// through its phases to the stop (status and events alike).
#[test]
fn watch_falls_back_to_polling_behind_a_proxy_without_websockets() {
    let env = Env::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = rt.block_on(proxy_without_websockets(env.base.clone()));
    let proxy = proxy.as_str();
    let id = env.create("behind a proxy", "h1");
    let id = id.as_str();
    // REST passes through the proxy.
    let out = phoenix(
        &env.config(),
        &["--server", proxy, "experiment", "get", id],
        &[],
    );
    assert_ok(&out, &["get through the proxy"]);

    let watch = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_phoenix"))
            .args(["--server", proxy, "experiment"])
            .args(args)
            .args(["--watch", "--interval", "200ms"])
            .env("PHOENIX_CONFIG", env.config())
            .env_remove("PHOENIX_SERVER")
            .env_remove("PHOENIX_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut status = watch(&["status", id]);
    let mut events = watch(&["events", id, "-o", "json"]);
    std::thread::sleep(Duration::from_millis(1000));
    env.ok(&["experiment", "start", id]);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        status.try_wait().unwrap().is_none(),
        "status watch ended early"
    );
    assert!(
        events.try_wait().unwrap().is_none(),
        "events watch ended early"
    );
    env.ok(&["experiment", "stop", id, "--reason", "seen by polling"]);

    for child in [&mut status, &mut events] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s.code();
            }
            assert!(Instant::now() < deadline, "watch did not end");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(code, Some(4), "a watch of a stopped experiment exits 4");
    }
    let fell_back = |err: &str| {
        // The API's 400 for a GET without the upgrade headers (its code, or only its status
        // when the body came after the head the WebSocket client read).
        assert!(
            (err.contains("event stream unavailable (websocket_upgrade_required: ")
                || err.contains("event stream unavailable (http_400: "))
                && err.contains("polling every 200ms"),
            "{err}"
        );
        assert!(!err.contains("following"), "{err}");
    };
    let out = status.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    fell_back(&err);
    // Each phase the polls saw, in order, then the final status.
    let pending = err.find("pending").expect("pending noted");
    let initializing = err.find("initializing").expect("initializing noted");
    let stopped = err.find("seen by polling").expect("stop noted");
    assert!(pending < initializing && initializing < stopped, "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stopped") && text.contains(id), "{text}");

    let out = events.wait_with_output().unwrap();
    fell_back(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines
        .iter()
        .map(|e| e["to_phase"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(kinds, ["pending", "initializing", "stopped"], "{lines:?}");
}
