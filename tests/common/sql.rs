//! Private database servers for the SQL engine tests: MariaDB started with
//! mariadb-install-db and mariadbd, PostgreSQL with initdb and pg_ctl (under
//! `runuser -u postgres` when run as root), each in a temp dir on a free
//! loopback port. Where the programs are missing the tests say so and skip,
//! unless RIPPLE_REQUIRE_SQL_TESTS=1, when they fail.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    MariaDb,
    Postgres,
}

/// A running private server.
pub struct DbServer {
    pub kind: Kind,
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    running: bool,
}

fn required() -> bool {
    std::env::var("RIPPLE_REQUIRE_SQL_TESTS").as_deref() == Ok("1")
}

/// Finds a program on PATH or in the usual server directories.
fn find(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/local/sbin".into());
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Runs a command, as the postgres user when root and `as_postgres`.
fn run(program: &Path, args: &[&str], as_postgres: bool) -> std::process::Output {
    let mut cmd = if as_postgres && is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// Skips (returns `None`) or fails, as RIPPLE_REQUIRE_SQL_TESTS says.
fn missing(what: &str) -> Option<DbServer> {
    if required() {
        panic!("RIPPLE_REQUIRE_SQL_TESTS=1 but {what} is not installed");
    }
    eprintln!(
        "skipping: {what} is not installed (set RIPPLE_REQUIRE_SQL_TESTS=1 to make this an error)"
    );
    None
}

impl DbServer {
    /// Starts a server of `kind`, or `None` when its programs are missing.
    pub fn start(kind: Kind) -> Option<DbServer> {
        match kind {
            Kind::MariaDb => DbServer::mariadb(),
            Kind::Postgres => DbServer::postgres(),
        }
    }

    fn mariadb() -> Option<DbServer> {
        let (Some(install), Some(bin)) = (find("mariadb-install-db"), find("mariadbd")) else {
            return missing("MariaDB (mariadb-install-db, mariadbd)");
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // A temp dir of its own: servers sharing /tmp collide on temp tables.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let out = run(
            &install,
            &[
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                &format!("--tmpdir={}", tmp.display()),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ],
            false,
        );
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = DbServer {
            kind: Kind::MariaDb,
            port: free_port(),
            dir,
            bin,
            running: false,
        };
        server.resume();
        Some(server)
    }

    fn postgres() -> Option<DbServer> {
        let (Some(initdb), Some(pg_ctl)) = (find("initdb"), find("pg_ctl")) else {
            return missing("PostgreSQL (initdb, pg_ctl)");
        };
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "chown failed");
        }
        let data = dir.path().join("data");
        let out = run(
            &initdb,
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            true,
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = DbServer {
            kind: Kind::Postgres,
            port: free_port(),
            dir,
            bin: pg_ctl,
            running: false,
        };
        server.resume();
        Some(server)
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        match self.kind {
            Kind::MariaDb => format!("mysql://root@127.0.0.1:{}/{db}", self.port),
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/{db}", self.port),
        }
    }

    /// The engine name for a node's config.
    pub fn engine(&self) -> &'static str {
        match self.kind {
            Kind::MariaDb => "mysql",
            Kind::Postgres => "postgres",
        }
    }

    fn admin_url(&self) -> String {
        match self.kind {
            Kind::MariaDb => self.url("mysql"),
            Kind::Postgres => self.url("postgres"),
        }
    }

    /// Creates database `name` (no error when it exists).
    pub fn create_database(&self, name: &str) {
        let url = self.admin_url();
        let kind = self.kind;
        let name = name.to_owned();
        // A thread of its own: callers may or may not be inside a runtime.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match kind {
                    Kind::MariaDb => {
                        let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
                        let q = format!("CREATE DATABASE IF NOT EXISTS {name}");
                        sqlx::raw_sql(sqlx::AssertSqlSafe(q))
                            .execute(&mut c)
                            .await
                            .unwrap();
                    }
                    Kind::Postgres => {
                        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                        let q = format!("CREATE DATABASE {name}");
                        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(q)).execute(&mut c).await
                        {
                            assert!(e.to_string().contains("already exists"), "{e}");
                        }
                    }
                }
            })
        })
        .join()
        .unwrap();
    }

    /// Stops the server abruptly (as a crash or a lost host would).
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        match self.kind {
            Kind::MariaDb => {
                if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("mariadb.pid")) {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        let start = Instant::now();
                        while unsafe { libc::kill(pid, 0) } == 0
                            && start.elapsed() < Duration::from_secs(10)
                        {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            }
            Kind::Postgres => {
                let data = self.dir.path().join("data");
                run(
                    &self.bin,
                    &[
                        "-D",
                        data.to_str().unwrap(),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ],
                    true,
                );
            }
        }
        self.running = false;
    }

    /// Starts the server again on the same port and data.
    // The watchdogs outlive this call on purpose; they end with the server.
    #[allow(clippy::zombie_processes)]
    pub fn resume(&mut self) {
        let dir = self.dir.path();
        match self.kind {
            Kind::MariaDb => {
                let data = dir.join("data");
                let args = [
                    "--no-defaults".to_owned(),
                    format!("--datadir={}", data.display()),
                    format!("--tmpdir={}", dir.join("tmp").display()),
                    format!("--port={}", self.port),
                    "--bind-address=127.0.0.1".into(),
                    format!("--socket={}", dir.join("mariadb.sock").display()),
                    format!("--pid-file={}", dir.join("mariadb.pid").display()),
                    format!("--log-error={}", dir.join("mariadb.err").display()),
                    "--skip-grant-tables".into(),
                    "--skip-name-resolve".into(),
                    "--innodb-buffer-pool-size=32M".into(),
                    // Room for a value of the default max_value_bytes (16 MiB).
                    "--max-allowed-packet=64M".into(),
                    "--user=root".into(),
                ];
                // A watchdog ends the server when this test process ends
                // (checked through /proc: the server may run as another user,
                // which may not signal this process), and then removes its
                // directory: a server held in a static is never dropped.
                let script = format!(
                    "\"$0\" \"$@\" & srv=$!; while [ -d /proc/{pid} ] && kill -0 $srv 2>/dev/null; do sleep 0.5; done; kill -9 $srv 2>/dev/null; wait $srv; [ -d /proc/{pid} ] || rm -rf \"$RIPPLE_TEST_SERVER_DIR\"",
                    pid = std::process::id()
                );
                Command::new("sh")
                    .env("RIPPLE_TEST_SERVER_DIR", dir)
                    .arg("-c")
                    .arg(script)
                    .arg(&self.bin)
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
            }
            Kind::Postgres => {
                let data = dir.join("data");
                let opts = format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1",
                    self.port,
                    dir.display()
                );
                let out = run(
                    &self.bin,
                    &[
                        "-D",
                        data.to_str().unwrap(),
                        "-o",
                        &opts,
                        "-l",
                        dir.join("pg.log").to_str().unwrap(),
                        "-w",
                        "start",
                    ],
                    true,
                );
                assert!(
                    out.status.success(),
                    "pg_ctl start failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let stop = format!(
                    "while [ -d /proc/{} ]; do sleep 0.5; done; \"$0\" -D \"$1\" -m immediate stop; rm -rf \"$2\"",
                    std::process::id()
                );
                let mut watchdog = if is_root() {
                    let mut c = Command::new("runuser");
                    c.args(["-u", "postgres", "--", "sh", "-c"]);
                    c
                } else {
                    let mut c = Command::new("sh");
                    c.arg("-c");
                    c
                };
                watchdog
                    .arg(stop)
                    .arg(&self.bin)
                    .arg(&data)
                    .arg(dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
            }
        }
        self.running = true;
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        let url = self.admin_url();
        let kind = self.kind;
        loop {
            let url = url.clone();
            let ok = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    match kind {
                        Kind::MariaDb => sqlx::MySqlConnection::connect(&url).await.is_ok(),
                        Kind::Postgres => sqlx::PgConnection::connect(&url).await.is_ok(),
                    }
                })
            })
            .join()
            .unwrap();
            if ok {
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.dir.path().join("mariadb.err"))
                    .or_else(|_| std::fs::read_to_string(self.dir.path().join("pg.log")))
                    .unwrap_or_default();
                panic!("{:?} did not start within 60 s:\n{log}", self.kind);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for DbServer {
    fn drop(&mut self) {
        self.stop();
    }
}
