//! The coordinator's serving settings, as flags (shared by `tidemark-coordinator` and
//! `tidemark up`) and resolved into [`ServeOptions`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tidemark_proto::auth::{load_tokens, TokenCheck};
use tonic::transport::Identity;

/// Messages buffered per subscriber before it is dropped as too slow.
pub const SUBSCRIBER_BUFFER: usize = 256;
/// The largest request accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Flags of the public server.
#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address of the public gRPC server.
    #[arg(long, env = "TIDEMARK_COORDINATOR_LISTEN", default_value = "127.0.0.1:6875")]
    pub listen: SocketAddr,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`).
    #[arg(long, env = "TIDEMARK_METRICS_LISTEN", default_value = "127.0.0.1:6876")]
    pub metrics_listen: SocketAddr,
    /// File of accepted bearer tokens, one per line. With tokens (from here or
    /// `--tokens`), every `tidemark.v1` call needs `authorization: Bearer <token>`;
    /// health and reflection stay open for probes.
    #[arg(long, env = "TIDEMARK_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Accepted bearer tokens, comma-separated (prefer the environment variable).
    #[arg(long, env = "TIDEMARK_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// PEM certificate chain for TLS on the public port (with `--tls-key`).
    #[arg(long, env = "TIDEMARK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the public port (with `--tls-cert`).
    #[arg(long, env = "TIDEMARK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Messages buffered per subscriber; one that falls further behind is dropped with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "TIDEMARK_SUBSCRIBER_BUFFER", default_value_t = SUBSCRIBER_BUFFER)]
    pub subscriber_buffer: usize,
    /// Largest request accepted (bytes); a larger one gets OUT_OF_RANGE.
    #[arg(long, env = "TIDEMARK_MAX_MESSAGE_BYTES", default_value_t = MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
}

/// The secret the coordinator and the worker processes share on the internal port.
#[derive(Clone, Debug, Args)]
pub struct InternalSecret {
    /// File holding the internal port's shared secret. With a secret, a worker process
    /// accepts only a coordinator that presents it.
    #[arg(long, env = "TIDEMARK_INTERNAL_SECRET_FILE")]
    pub internal_secret_file: Option<PathBuf>,
    /// The internal port's shared secret itself (prefer the environment variable).
    #[arg(long, env = "TIDEMARK_INTERNAL_SECRET", hide_env_values = true)]
    pub internal_secret: Option<String>,
}

impl InternalSecret {
    /// The secret, if one is configured (the file wins; surrounding whitespace is dropped).
    pub fn load(&self) -> anyhow::Result<Option<String>> {
        let secret = match &self.internal_secret_file {
            Some(path) => Some(read(path)?),
            None => self.internal_secret.clone(),
        };
        Ok(secret.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
    }

    /// The check a worker process applies to its callers.
    pub fn check(&self) -> anyhow::Result<TokenCheck> {
        Ok(TokenCheck::new(self.load()?.as_deref()))
    }
}

/// Resolved serving settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Accepted bearer tokens (none: open).
    pub tokens: TokenCheck,
    /// TLS identity of the public port (none: plaintext).
    pub tls: Option<Identity>,
    /// Messages buffered per subscriber.
    pub subscriber_buffer: usize,
    /// Largest request accepted, bytes.
    pub max_message_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { tokens: TokenCheck::default(), tls: None, subscriber_buffer: SUBSCRIBER_BUFFER, max_message_bytes: MAX_MESSAGE_BYTES }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

impl ServeArgs {
    /// Reads the token and certificate files.
    pub fn options(&self) -> anyhow::Result<ServeOptions> {
        anyhow::ensure!(self.subscriber_buffer > 0, "--subscriber-buffer must be at least 1");
        let tokens = load_tokens(self.tokens_file.as_deref(), self.tokens.as_deref())
            .with_context(|| format!("reading {}", self.tokens_file.as_deref().unwrap_or(Path::new("")).display()))?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(read(cert)?, read(key)?)),
            _ => None,
        };
        Ok(ServeOptions { tokens, tls, subscriber_buffer: self.subscriber_buffer, max_message_bytes: self.max_message_bytes })
    }

    /// A one-line description of the security settings.
    pub fn describe_security(options: &ServeOptions) -> String {
        format!(
            "{}, {}",
            if options.tls.is_some() { "TLS" } else { "plaintext" },
            if options.tokens.enabled() { "bearer tokens required" } else { "no authentication" }
        )
    }
}
