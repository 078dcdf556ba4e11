//! The CLI's config file: named contexts (a server URL, an optional bearer token and an
//! optional CA file for a server signed by a private CA) and the current one, in
//! `~/.config/phoenix/config.yaml` (`$PHOENIX_CONFIG` overrides the path). Written with mode
//! 0600 because it may hold tokens.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub name: String,
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Set by `phoenix login` with a password: exchanged for a new access token when the
    /// server answers 401 (the pair is then rewritten here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Who `phoenix login` logged in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A CA certificate (PEM, absolute path) trusted for this server besides the web roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// Where the config file lives.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PHOENIX_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|p| !p.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("phoenix").join("config.yaml")
}

impl Config {
    /// Read the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, CliError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(CliError::usage(format!(
                    "cannot read config {}: {e}",
                    path.display()
                )))
            }
        };
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(&text).map_err(|e| {
            CliError::usage(format!(
                "invalid config {}: {}",
                path.display(),
                one_line(&e.to_string())
            ))
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        let text = serde_yaml::to_string(self)
            .map_err(|e| CliError::usage(format!("cannot encode config: {e}")))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))?;
        }
        let tmp = path.with_extension("yaml.tmp");
        write_private(&tmp, text.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| CliError::usage(format!("cannot write config {}: {e}", path.display())))
    }

    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    pub fn context_mut(&mut self, name: &str) -> Option<&mut Context> {
        self.contexts.iter_mut().find(|c| c.name == name)
    }

    /// Add or update a context; the first one becomes current.
    pub fn set_context(&mut self, name: &str, server: &str, token: Option<String>) {
        match self.context_mut(name) {
            Some(c) => {
                c.server = server.to_string();
                if token.is_some() {
                    c.token = token;
                    c.refresh_token = None;
                    c.username = None;
                }
            }
            None => self.contexts.push(Context {
                name: name.to_string(),
                server: server.to_string(),
                token,
                refresh_token: None,
                username: None,
                ca_file: None,
            }),
        }
        if self.current_context.is_none() {
            self.current_context = Some(name.to_string());
        }
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Error texts from parsers can span lines; the CLI prints one.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_context_set_becomes_current_and_tokens_survive_a_server_change() {
        let mut c = Config::default();
        c.set_context("prod", "https://p", Some("t".into()));
        c.set_context("dev", "http://d", None);
        assert_eq!(c.current_context.as_deref(), Some("prod"));
        c.set_context("prod", "https://p2", None);
        let prod = c.context("prod").expect("prod");
        assert_eq!(prod.server, "https://p2");
        assert_eq!(prod.token.as_deref(), Some("t"));
    }

    #[test]
    fn config_round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/config.yaml");
        assert_eq!(
            Config::load(&path).expect("missing is empty"),
            Config::default()
        );
        let mut c = Config::default();
        c.set_context("a", "http://a", Some("tok".into()));
        c.set_context("b", "https://b", None);
        if let Some(b) = c.context_mut("b") {
            b.ca_file = Some("/etc/phoenix/ca.pem".into());
        }
        c.save(&path).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("ca_file: /etc/phoenix/ca.pem"), "{text}");
        assert_eq!(Config::load(&path).expect("load"), c);
    }

    #[test]
    fn a_broken_config_is_one_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "contexts: [ {name: x").expect("write");
        let e = Config::load(&path).expect_err("broken");
        assert!(!e.message.contains('\n'));
        assert!(e.message.starts_with("invalid config"));
    }
}
