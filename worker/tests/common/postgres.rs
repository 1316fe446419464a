//! A real, ephemeral PostgreSQL 15 server for tests: a cluster in a directory the test
//! owns (typically in its [`Scratch`](super::Scratch)), a free loopback port, `fsync=off`,
//! trust authentication; stopped (fast) on drop, also when the test panics. It can be
//! stopped and started again on the same data directory and port.
//!
//! `initdb` and `postgres` refuse to run as root: as root, the directory belongs to user
//! `postgres` and the commands run through `runuser -u postgres`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::free_ports;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running (or stopped) test server.
pub struct Postgres {
    dir: PathBuf,
    port: u16,
    running: bool,
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn tool(name: &str) -> Command {
    let path = Path::new(BIN).join(name);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{what}: cannot run: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({}):\n{}{}", output.status, String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    }
}

impl Postgres {
    /// Creates a cluster in `dir` (created; removing it is the caller's business) and
    /// starts it. Panics with a clear message when PostgreSQL 15 is not installed.
    pub fn start(dir: &Path) -> Postgres {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL 15 is not installed ({BIN}/initdb is missing): run scripts/test, which installs it (apt-get install postgresql)"
        );
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        if is_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(dir);
            run(chown, "chown of the PostgreSQL directory").unwrap_or_else(|e| panic!("{e}"));
        }
        let mut initdb = tool("initdb");
        initdb.arg("-D").arg(dir.join("data")).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"]);
        run(initdb, "initdb").unwrap_or_else(|e| panic!("{e}"));
        let mut server = Postgres { dir: dir.to_owned(), port: 0, running: false };
        // A free port may be taken between finding and binding it: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            server.port = free_ports(1)[0];
            match server.try_start() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}\nlog:\n{}", server.log());
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn try_start(&mut self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let mut pg_ctl = tool("pg_ctl");
        pg_ctl.arg("-D").arg(self.data()).arg("-l").arg(self.dir.join("log")).args(["-w", "-t", "30", "-o", &options, "start"]);
        run(pg_ctl, "pg_ctl start")?;
        self.running = true;
        Ok(())
    }

    /// Starts the stopped server again (same data, same port).
    pub fn restart(&mut self) {
        assert!(!self.running, "the server is running");
        self.try_start().unwrap_or_else(|e| panic!("{e}\nlog:\n{}", self.log()));
    }

    /// Stops the server (`pg_ctl -m fast stop`: connections are closed, sessions end with
    /// `57P01 admin_shutdown`).
    pub fn stop(&mut self) {
        if self.running {
            let mut pg_ctl = tool("pg_ctl");
            pg_ctl.arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]);
            run(pg_ctl, "pg_ctl stop").unwrap_or_else(|e| panic!("{e}"));
            self.running = false;
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL connecting as `user` to database `postgres`.
    pub fn url_as(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/postgres", self.port)
    }

    /// A URL connecting as the superuser.
    pub fn url(&self) -> String {
        self.url_as("postgres")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let mut pg_ctl = tool("pg_ctl");
            pg_ctl.arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]);
            if let Err(e) = run(pg_ctl, "pg_ctl stop") {
                eprintln!("{e}");
            }
        }
    }
}
