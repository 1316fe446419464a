//! A real Kafka-protocol broker for tests: tansu, a separate server process on a random
//! loopback port, storing in SQLite under the test's directory so that it keeps topics,
//! records and committed offsets across a restart.
//!
//! `scripts/test` installs tansu once into `target/tools/tansu` (about 10-20 minutes of
//! compiling on 2 cores); `TIDEMARK_TANSU` may name another binary.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tansu binary, or a panic that says how to get it.
pub fn tansu() -> PathBuf {
    if let Some(path) = std::env::var_os("TIDEMARK_TANSU") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/tansu/bin/tansu");
    assert!(
        path.is_file(),
        "no Kafka-protocol broker at {}: run scripts/test, which installs tansu there once \
         (cargo install tansu@0.6.0 --features dynostore,libsql --root target/tools/tansu), or set TIDEMARK_TANSU",
        path.display()
    );
    path
}

/// A running broker.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Broker {
    /// Starts a broker storing in `dir` on a free loopback port.
    pub fn start(dir: &Path) -> Broker {
        std::fs::create_dir_all(dir).expect("broker directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback bind").local_addr().expect("address").port();
        let mut broker = Broker { child: None, port, dir: dir.to_owned() };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("broker.log")).expect("broker log");
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the broker did not listen within 30 s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let output = Command::new(tansu())
            .args(["topic", "create", "--broker", &format!("tcp://127.0.0.1:{}", self.port), "--partitions", &partitions.to_string(), name])
            .output()
            .expect("tansu topic create runs");
        assert!(output.status.success(), "creating topic {name}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Stops the broker (SIGKILL: nothing but its storage survives).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
