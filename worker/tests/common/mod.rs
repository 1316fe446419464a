//! Helpers for tests that run the `tidemark` binary, and a real PostgreSQL server ([`postgres`]).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub mod postgres;
pub mod serving;

/// A fresh scratch directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos();
        let dir = std::env::temp_dir().join(format!("tidemark-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        Scratch(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Child processes killed (and reaped) when dropped, so that none outlives a test that
/// fails before stopping them.
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `tidemark` binary with `run` and the given arguments.
pub fn tidemark_run(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    command.arg("run").args(args);
    command
}

/// Waits for a child, killing it after `limit`.
pub fn wait_with_timeout(mut child: Child, limit: Duration, what: &str) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("child can be polled").is_some() {
            return child.wait_with_output().expect("child output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output().expect("killed child output");
            panic!("{what} did not finish within {limit:?}; stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The shared reference data directory, if present beside the checkout.
pub fn shared_data(relative: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data").join(relative);
    path.is_file().then_some(path)
}

/// Free loopback ports for servers a test starts, bound and released.
///
/// Drawn at random below the kernel's ephemeral range (which starts at 32768 on Linux),
/// where outgoing connections take their source ports: a port taken from that range
/// could be taken again by some connection (or a connection to it from itself) before
/// the server binds it. What remains is two tests drawing the same port at once.
pub fn free_ports(n: usize) -> Vec<u16> {
    use rand::{Rng, SeedableRng};
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64) ^ u64::from(std::process::id()) << 32;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    while listeners.len() < n {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", rng.random_range(20_000..32_000))) {
            listeners.push(l);
        }
    }
    listeners.iter().map(|l| l.local_addr().expect("bound address").port()).collect()
}
