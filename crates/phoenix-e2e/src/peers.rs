//! Third-party peers the end-to-end tests run beside Phoenix (VictoriaMetrics, Prometheus,
//! node-exporter from Debian's packages), as blocking helpers for synchronous tests:
//! install, spawn with a log file, wait for a condition, read over HTTP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The binaries of `wanted` (`(Debian package, binary path)`), installing the missing
/// packages with apt-get (waiting for dpkg's lock, `apt-get update` once if the first try
/// fails). Panics naming the packages when they still are missing.
pub fn debian_binaries(wanted: &[(&str, &str)]) -> Vec<PathBuf> {
    let missing = || -> Vec<&str> {
        wanted
            .iter()
            .filter(|(_, binary)| !Path::new(binary).exists())
            .map(|(package, _)| *package)
            .collect()
    };
    let packages = missing();
    if !packages.is_empty() {
        let install = || {
            Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install() {
            let _ = Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=600", "update", "-qq"])
                .status();
            install();
        }
        let still = missing();
        assert!(
            still.is_empty(),
            "end-to-end peers missing: install the Debian packages {} (apt-get install -y {})",
            still.join(", "),
            still.join(" ")
        );
    }
    wanted
        .iter()
        .map(|(_, binary)| PathBuf::from(binary))
        .collect()
}

/// A child process with its log file, killed on drop.
#[derive(Debug)]
pub struct Peer {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Peer {
    /// Starts `program` with stdout and stderr in `log`.
    pub fn spawn(name: &'static str, program: &Path, args: &[String], log: &Path) -> Self {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", program.display()));
        Self {
            name,
            child,
            log: log.to_path_buf(),
        }
    }

    /// Panics with the end of the log when the process has exited.
    fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            panic!(
                "{} exited with {status} while waiting for {what}; its log ends:\n{tail}",
                self.name
            );
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 200 ms until it returns `Some`; fails at `timeout`, or at once
/// (with its log) when one of `peers` exits.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    peers: &mut [&mut Peer],
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        for peer in peers.iter_mut() {
            peer.assert_running(what);
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The body of a successful GET, `None` on any failure.
pub fn http_get(url: &str) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let response = reqwest::get(url).await.ok()?;
        response.status().is_success().then_some(())?;
        response.text().await.ok()
    })
}

/// VictoriaMetrics single-node (installed when missing) on a free port with its data in
/// `dir/vm`, once `/health` answers.
pub fn start_victoria_metrics(dir: &Path) -> (Peer, u16) {
    let binaries = debian_binaries(&[("victoria-metrics", "/usr/bin/victoria-metrics")]);
    let port = free_port();
    let mut vm = Peer::spawn(
        "victoria-metrics",
        &binaries[0],
        &[
            format!("-storageDataPath={}", dir.join("vm").display()),
            format!("-httpListenAddr=127.0.0.1:{port}"),
            "-retentionPeriod=1d".into(),
            "-search.disableCache".into(),
        ],
        &dir.join("vm.log"),
    );
    eventually(
        "victoria-metrics health",
        Duration::from_secs(30),
        &mut [&mut vm],
        || http_get(&format!("http://127.0.0.1:{port}/health")),
    );
    (vm, port)
}

/// prometheus-node-exporter (installed when missing) on a free port.
pub fn start_node_exporter(dir: &Path) -> (Peer, u16) {
    let binaries = debian_binaries(&[(
        "prometheus-node-exporter",
        "/usr/bin/prometheus-node-exporter",
    )]);
    let port = free_port();
    let node = Peer::spawn(
        "prometheus-node-exporter",
        &binaries[0],
        &[format!("--web.listen-address=127.0.0.1:{port}")],
        &dir.join("node.log"),
    );
    (node, port)
}
