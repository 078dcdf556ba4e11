//! Exit codes and the one-line error the CLI prints. 0 ok, 1 the API refused (4xx/5xx),
//! 2 usage or local input (bad flags, unreadable or invalid files, unknown context),
//! 3 the server cannot be reached (or its TLS certificate is not trusted), 4 a `--watch`
//! ended in `failed`, `rolled_back` or `stopped`.

use phoenix_client::ClientError;

pub const EXIT_API: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_WATCH_FAILED: u8 = 4;

#[derive(Debug)]
pub struct CliError {
    pub exit_code: u8,
    /// Printed as `error: <message>` on stderr; always one line.
    pub message: String,
}

impl CliError {
    pub fn new(exit_code: u8, message: impl Into<String>) -> Self {
        Self {
            exit_code,
            message: crate::config::one_line(&message.into()),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, message)
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Api { .. } | ClientError::Decode { .. } => EXIT_API,
            ClientError::Unreachable { .. } | ClientError::Untrusted { .. } => EXIT_UNREACHABLE,
            ClientError::InvalidUrl { .. } | ClientError::CaFile { .. } | ClientError::Tls(_) => {
                EXIT_USAGE
            }
        };
        let mut message = e.to_string();
        if matches!(e, ClientError::Untrusted { .. }) {
            message.push_str(
                "; if a private CA signed it, pass that CA's certificate with --ca-file FILE, $PHOENIX_CA_FILE or `phoenix context set NAME --ca-file FILE`",
            );
        }
        Self::new(code, message)
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;
