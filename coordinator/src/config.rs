//! The coordinator's serving settings, as flags (shared by `tidemark-coordinator` and
//! `tidemark up`) and resolved into [`ServeOptions`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tidemark_proto::auth::{load_tokens, TokenCheck};
use tidemark_proto::limits::MAX_PUBLIC_MESSAGE_BYTES;
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

/// The addresses of a pool of processes, one per process index, from a template: `{i}`
/// stands for the index, as in `tidemark-worker-{i}.tidemark-worker:6880` (the stable
/// DNS names a StatefulSet's headless Service gives its pods).
pub fn expand_template(template: &str, count: usize) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(template.contains("{i}"), "the address template {template:?} has no {{i}} for the process index");
    anyhow::ensure!(count > 0, "a pool of 0 processes");
    Ok((0..count).map(|i| template.replace("{i}", &i.to_string())).collect())
}

/// Addresses to connect to in place of others: how a pod's configuration runs outside
/// Kubernetes, where its DNS names do not resolve (the loopback test of the manifests).
#[derive(Clone, Debug, Default, Args)]
pub struct AddressMap {
    /// Comma-separated `from=to` pairs of `host:port`: wherever an address of the pool is
    /// `from`, use `to` instead.
    #[arg(long, env = "TIDEMARK_ADDRESS_MAP", value_delimiter = ',')]
    pub address_map: Vec<String>,
}

impl AddressMap {
    /// `addresses` with every mapped one replaced.
    pub fn apply(&self, addresses: Vec<String>) -> anyhow::Result<Vec<String>> {
        let mut map = std::collections::HashMap::new();
        for pair in self.address_map.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let (from, to) = pair.split_once('=').with_context(|| format!("--address-map entry {pair:?} is not from=to"))?;
            map.insert(from.trim(), to.trim());
        }
        Ok(addresses.into_iter().map(|a| map.get(a.as_str()).map_or(a, |to| (*to).to_owned())).collect())
    }
}

/// Where the coordinator finds the worker processes: a list, or a template and a count.
#[derive(Clone, Debug, Args)]
pub struct WorkerAddresses {
    /// Comma-separated internal gRPC addresses of every worker process, in process order.
    #[arg(long = "workers", env = "TIDEMARK_WORKER_ADDRESSES", value_delimiter = ',', conflicts_with = "worker_template")]
    pub workers: Vec<String>,
    /// The internal gRPC address of worker process `{i}` (with `--processes`), e.g.
    /// `tidemark-worker-{i}.tidemark-worker:6880`.
    #[arg(long, env = "TIDEMARK_WORKER_TEMPLATE")]
    pub worker_template: Option<String>,
    /// Number of worker processes: how far `--worker-template` counts (and, with
    /// `--workers`, how many it must list).
    #[arg(long, env = "TIDEMARK_PROCESSES")]
    pub processes: Option<usize>,
    /// Addresses used in place of others.
    #[command(flatten)]
    pub map: AddressMap,
}

impl WorkerAddresses {
    /// The address of every worker process, in process order.
    pub fn resolve(&self) -> anyhow::Result<Vec<String>> {
        let addresses = match (&self.worker_template, self.processes) {
            (Some(template), Some(n)) => expand_template(template, n)?,
            (Some(_), None) => anyhow::bail!("--worker-template needs --processes (TIDEMARK_PROCESSES)"),
            (None, n) => {
                anyhow::ensure!(!self.workers.is_empty(), "give the worker processes' addresses: --workers, or --worker-template with --processes");
                if let Some(n) = n {
                    anyhow::ensure!(n == self.workers.len(), "--workers lists {} addresses for --processes {n}", self.workers.len());
                }
                self.workers.clone()
            }
        };
        self.map.apply(addresses)
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
        anyhow::ensure!(
            (1024..=MAX_PUBLIC_MESSAGE_BYTES).contains(&self.max_message_bytes),
            "--max-message-bytes must be between 1024 and {MAX_PUBLIC_MESSAGE_BYTES} (the internal protocol carries one request whole)"
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(workers: &[&str], template: Option<&str>, processes: Option<usize>, map: &[&str]) -> anyhow::Result<Vec<String>> {
        WorkerAddresses {
            workers: workers.iter().map(|s| s.to_string()).collect(),
            worker_template: template.map(str::to_owned),
            processes,
            map: AddressMap { address_map: map.iter().map(|s| s.to_string()).collect() },
        }
        .resolve()
    }

    #[test]
    fn templates_count_from_zero() {
        assert_eq!(expand_template("w-{i}.w:6880", 3).unwrap(), ["w-0.w:6880", "w-1.w:6880", "w-2.w:6880"]);
        assert!(expand_template("w.w:6880", 3).unwrap_err().to_string().contains("{i}"));
        assert!(expand_template("w-{i}:1", 0).is_err());
    }

    #[test]
    fn worker_addresses_from_a_list_or_a_template() {
        assert_eq!(addresses(&["a:1", "b:2"], None, None, &[]).unwrap(), ["a:1", "b:2"]);
        assert_eq!(addresses(&["a:1", "b:2"], None, Some(2), &[]).unwrap(), ["a:1", "b:2"]);
        assert!(addresses(&["a:1", "b:2"], None, Some(3), &[]).unwrap_err().to_string().contains("lists 2 addresses for --processes 3"));
        assert!(addresses(&[], None, None, &[]).is_err());
        assert!(addresses(&[], Some("w-{i}:6880"), None, &[]).unwrap_err().to_string().contains("--processes"));
        assert_eq!(
            addresses(&[], Some("w-{i}.w:6880"), Some(2), &["w-1.w:6880=127.0.0.1:4001", " w-0.w:6880 = 127.0.0.1:4000 "]).unwrap(),
            ["127.0.0.1:4000", "127.0.0.1:4001"]
        );
        assert!(addresses(&[], Some("w-{i}:6880"), Some(1), &["nonsense"]).unwrap_err().to_string().contains("from=to"));
    }
}
