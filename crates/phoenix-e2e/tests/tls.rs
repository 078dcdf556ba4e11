//! HTTPS end to end: `phoenix-api` serving TLS from PEM files (a CA and a server certificate
//! generated here with rcgen), and real `phoenix-agent` processes that trust it through
//! `tls_ca_file`, with and without a pinned fingerprint. An agent that must not trust the
//! server (wrong pin, no CA) never enrolls and says why in its log. The `phoenix` CLI trusts
//! the same server through `--ca-file` / `$PHOENIX_CA_FILE` / a context's `ca_file`, for REST
//! and for the hub over `wss://`, and refuses it, in one line, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use phoenix_e2e::{
    bin, free_port, wait_for, AgentOptions, AgentProcess, TempDir, ADMIN_PASSWORD, ADMIN_USER,
    ENROLL_TOKEN,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use sha2::{Digest, Sha256};

struct Pki {
    ca_pem: String,
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Phoenix e2e CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "phoenix-api");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
        key_pem: key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

fn https_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_trust_the_api_through_the_configured_ca_and_pin() {
    let dir = TempDir::new("phoenix-e2e-tls");
    let pki = pki();
    let ca_file = write(dir.path(), "ca.pem", &pki.ca_pem);
    let cert_file = write(dir.path(), "server.pem", &pki.cert_pem);
    let key_file = write(dir.path(), "server.key", &pki.key_pem);
    let port = free_port();
    let log = dir.path().join("api.log");
    let child = Command::new(bin("phoenix-api"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("api-data"))
        .env("PHOENIX_ENROLLMENT_TOKEN", ENROLL_TOKEN)
        .env("PHOENIX_TLS_CERT_FILE", &cert_file)
        .env("PHOENIX_TLS_KEY_FILE", &key_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _api = Killed(child);
    let base = format!("https://127.0.0.1:{port}");

    // HTTPS with the CA answers; the log says it.
    let client = https_client(&pki.ca_pem);
    wait_for("the API over HTTPS", Duration::from_secs(30), || {
        let client = client.clone();
        let url = format!("{base}/ready");
        async move {
            match client.get(url).send().await {
                Ok(r) if r.status().is_success() => Some(()),
                _ => None,
            }
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"scheme\":\"https\""), "{text}");

    // Plain HTTP on the TLS port gets no answer; a client without the CA refuses the server.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(
        r.as_ref().map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not be served: {r:?}"
    );
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("{base}/health"))
        .send()
        .await
        .is_err());

    let pin = hex::encode(Sha256::digest(&pki.cert_der));
    let wrong_pin = hex::encode(Sha256::digest(b"another certificate"));
    let start = |name: &str, env: &[(&str, &str)]| {
        let mut opts = AgentOptions::new(&base, name, &dir.path().join(name));
        for (k, v) in env {
            opts = opts.env(k, v);
        }
        AgentProcess::start(opts)
    };
    let with_ca = start("tls-ca", &[("PHOENIX_AGENT_TLS_CA_FILE", &ca_file)]);
    let pinned = start(
        "tls-pinned",
        &[
            ("PHOENIX_AGENT_TLS_CA_FILE", &ca_file),
            ("PHOENIX_AGENT_TLS_PINNED_SHA256", &pin),
        ],
    );
    let mispinned = start(
        "tls-mispinned",
        &[
            ("PHOENIX_AGENT_TLS_CA_FILE", &ca_file),
            ("PHOENIX_AGENT_TLS_PINNED_SHA256", &wrong_pin),
        ],
    );
    let no_ca = start("tls-no-ca", &[]);

    for agent in [&with_ca, &pinned] {
        let creds = agent.data_dir.join("credentials.json");
        wait_for(
            &format!("{} to enroll over HTTPS", agent.host_id),
            Duration::from_secs(30),
            || {
                let found = creds.exists();
                async move { found.then_some(()) }
            },
        )
        .await;
    }
    wait_for(
        "the refused agents to log why",
        Duration::from_secs(30),
        || {
            let a = mispinned.log_text();
            let b = no_ca.log_text();
            async move {
                (a.contains("does not match tls_pinned_sha256")
                    && (b.contains("UnknownIssuer") || b.contains("invalid peer certificate")))
                .then_some(())
            }
        },
    )
    .await;
    assert!(!mispinned.data_dir.join("credentials.json").exists());
    assert!(!no_ca.data_dir.join("credentials.json").exists());
}

#[test]
fn the_api_refuses_half_a_tls_configuration() {
    let dir = TempDir::new("phoenix-e2e-tls-bad");
    let pki = pki();
    let cert_file = write(dir.path(), "server.pem", &pki.cert_pem);
    let junk = write(dir.path(), "junk.pem", "not pem\n");
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(bin("phoenix-api"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("PHOENIX_ENROLLMENT_TOKEN", ENROLL_TOKEN);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&[("PHOENIX_TLS_CERT_FILE", &cert_file)]);
    assert!(e.contains("tls_key_file"), "{e}");
    let e = run(&[
        ("PHOENIX_TLS_CERT_FILE", &cert_file),
        ("PHOENIX_TLS_KEY_FILE", &junk),
    ]);
    assert!(
        e.contains("`tls_key_file`") && e.contains("no private key"),
        "{e}"
    );
}

/// `phoenix-api` over HTTPS with the given certificate, with the e2e admin; its base URL
/// once `/ready` answers (checked with the CA).
async fn https_api(dir: &Path, pki: &Pki) -> (Killed, String) {
    let cert_file = write(dir, "server.pem", &pki.cert_pem);
    let key_file = write(dir, "server.key", &pki.key_pem);
    let port = free_port();
    let child = Command::new(bin("phoenix-api"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.join("api-data"))
        .env("PHOENIX_ENROLLMENT_TOKEN", ENROLL_TOKEN)
        .env("PHOENIX_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("PHOENIX_TLS_CERT_FILE", &cert_file)
        .env("PHOENIX_TLS_KEY_FILE", &key_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("api.log")).unwrap())
        .spawn()
        .unwrap();
    let api = Killed(child);
    let base = format!("https://127.0.0.1:{port}");
    let client = https_client(&pki.ca_pem);
    wait_for("the API over HTTPS", Duration::from_secs(30), || {
        let client = client.clone();
        let url = format!("{base}/ready");
        async move {
            match client.get(url).send().await {
                Ok(r) if r.status().is_success() => Some(()),
                _ => None,
            }
        }
    })
    .await;
    (api, base)
}

/// `phoenix ARGS` with its own config file, the given environment and stdin.
fn cli(config: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(bin("phoenix"));
    cmd.args(args)
        .env("PHOENIX_CONFIG", config)
        .env_remove("PHOENIX_SERVER")
        .env_remove("PHOENIX_TOKEN")
        .env_remove("PHOENIX_CA_FILE")
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

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The one stderr line of a failed command, and its exit code.
fn failure(out: &Output) -> (Option<i32>, String) {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "one stderr line expected: {err}");
    assert!(
        err.starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
    (out.status.code(), err)
}

/// The status of a child running on its own, once it ended (within 20 s).
fn exit_code(child: &mut std::process::Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        assert!(Instant::now() < deadline, "the watch did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_trusts_a_private_ca_for_rest_and_the_wss_hub() {
    let dir = TempDir::new("phoenix-e2e-tls-cli");
    let pki = pki();
    let (_api, base) = https_api(dir.path(), &pki).await;
    let base = base.as_str();
    let ca_file = write(dir.path(), "ca.pem", &pki.ca_pem);
    let other_ca = write(dir.path(), "other-ca.pem", &self::pki().ca_pem);
    let junk = write(dir.path(), "junk.pem", "not a certificate\n");
    let missing = dir.path().join("missing.pem").display().to_string();
    let (ca_file, other_ca, junk, missing) = (
        ca_file.as_str(),
        other_ca.as_str(),
        junk.as_str(),
        missing.as_str(),
    );
    let config = dir.path().join("cli/config.yaml");
    let password = format!("{ADMIN_PASSWORD}\n");
    let login = [
        "--server",
        base,
        "login",
        "-u",
        ADMIN_USER,
        "--password-stdin",
    ];
    let login_with = |ca: &str| {
        let mut args = vec!["--ca-file", ca];
        args.extend_from_slice(&login);
        cli(&config, &args, &[], &password)
    };

    // Without the CA (UnknownIssuer), or with another CA of the same name (BadSignature):
    // exit 3, one line that says the server is not trusted and how to trust it.
    for out in [cli(&config, &login, &[], &password), login_with(other_ca)] {
        let (code, err) = failure(&out);
        assert_eq!(code, Some(3), "{err}");
        assert!(
            err.contains(&format!("cannot trust {base}/api/v1/auth/login"))
                && err.contains("invalid peer certificate")
                && err.contains("--ca-file"),
            "{err}"
        );
    }
    // A CA file that cannot be used: exit 2, naming the file and the problem.
    let (code, err) = failure(&login_with(missing));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(missing) && err.contains("cannot read"),
        "{err}"
    );
    let (code, err) = failure(&login_with(junk));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(junk) && err.contains("not PEM"), "{err}");

    // With the CA: the login stores the server and the CA file in the context, and the
    // commands after it trust the server through the context.
    ok(&login_with(ca_file), "login with --ca-file");
    let yaml = std::fs::read_to_string(&config).unwrap();
    assert!(yaml.contains(&format!("ca_file: {ca_file}")), "{yaml}");
    let list = ok(
        &cli(&config, &["experiment", "list", "-o", "json"], &[], ""),
        "list",
    );
    let page: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(page["total"], 0);

    // $PHOENIX_CA_FILE, and `context set --ca-file`, for a context without one.
    let token = https_client(&pki.ca_pem)
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({ "username": ADMIN_USER, "password": ADMIN_PASSWORD }))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let other_config = dir.path().join("cli/other.yaml");
    let set = [
        "context",
        "set",
        "bare",
        "--server",
        base,
        "--token",
        token.as_str(),
    ];
    ok(
        &cli(&other_config, &set, &[], ""),
        "context set without a CA",
    );
    let (code, _) = failure(&cli(&other_config, &["fleet", "status"], &[], ""));
    assert_eq!(code, Some(3));
    ok(
        &cli(
            &other_config,
            &["fleet", "status"],
            &[("PHOENIX_CA_FILE", ca_file)],
            "",
        ),
        "fleet status with $PHOENIX_CA_FILE",
    );
    let (code, err) = failure(&cli(
        &other_config,
        &["context", "set", "bare", "--ca-file", junk],
        &[],
        "",
    ));
    assert_eq!(code, Some(2), "{err}");
    ok(
        &cli(
            &other_config,
            &["context", "set", "bare", "--ca-file", ca_file],
            &[],
            "",
        ),
        "context set --ca-file",
    );
    ok(
        &cli(&other_config, &["fleet", "status"], &[], ""),
        "fleet status with the context's CA",
    );

    // An experiment followed over wss://. With a poll interval of an hour, only the hub can
    // report the stop within the deadline.
    let created = ok(
        &cli(
            &config,
            &[
                "experiment",
                "create",
                "--name",
                "over tls",
                "--baseline",
                "baseline",
                "--candidate",
                "adaptive",
                "--hosts",
                "h1",
                "--duration",
                "10m",
                "--start",
                "-o",
                "json",
            ],
            &[],
            "",
        ),
        "create",
    );
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["experiment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let watch = |args: &[&str], log: &str| {
        Command::new(bin("phoenix"))
            .args(["experiment"])
            .args(args)
            .args(["--watch", "--interval", "1h"])
            .env("PHOENIX_CONFIG", &config)
            .env_remove("PHOENIX_SERVER")
            .env_remove("PHOENIX_TOKEN")
            .env_remove("PHOENIX_CA_FILE")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .spawn()
            .unwrap()
    };
    let id = id.as_str();
    let mut status = watch(&["status", id], "status.err");
    let mut events = watch(&["events", id, "-o", "json"], "events.err");
    let following = format!(
        "following {id} on {}/api/v1/ws",
        base.replacen("https", "wss", 1)
    );
    for log in ["status.err", "events.err"] {
        let path = dir.path().join(log);
        let following = following.clone();
        wait_for(
            &format!("{log} to say it follows the hub over wss"),
            Duration::from_secs(20),
            || {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let found = text.contains(&following);
                assert!(!text.contains("unavailable"), "{text}");
                async move { found.then_some(()) }
            },
        )
        .await;
    }
    ok(
        &cli(
            &config,
            &["experiment", "stop", id, "--reason", "tls done"],
            &[],
            "",
        ),
        "stop",
    );
    assert_eq!(exit_code(&mut status), Some(4));
    assert_eq!(exit_code(&mut events), Some(4));
    let out = status.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stopped") && text.contains("tls done"),
        "{text}"
    );
    let out = events.wait_with_output().unwrap();
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .unwrap();
    assert_eq!(last["to_phase"], "stopped", "{last}");

    // A watch that does not trust the server fails at once, in one line.
    let (code, err) = failure(&cli(
        &config,
        &["--ca-file", other_ca, "experiment", "status", id, "--watch"],
        &[],
        "",
    ));
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("cannot trust") && err.contains("invalid peer certificate"),
        "{err}"
    );
}
