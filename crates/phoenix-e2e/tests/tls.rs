//! HTTPS end to end: `phoenix-api` serving TLS from PEM files (a CA and a server certificate
//! generated here with rcgen), and real `phoenix-agent` processes that trust it through
//! `tls_ca_file`, with and without a pinned fingerprint. An agent that must not trust the
//! server (wrong pin, no CA) never enrolls and says why in its log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use phoenix_e2e::{bin, free_port, wait_for, AgentOptions, AgentProcess, TempDir, ENROLL_TOKEN};
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
