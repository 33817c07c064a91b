//! Private MariaDB servers for tests, benchmarks and the demo.
//!
//! [`MariaServer::start`] runs Debian's `mariadbd` on a fresh copy of a prepared data
//! directory (the *template*, made once by `mariadb-install-db` and reused), on a free
//! loopback port and a private socket. Several run at once, one per simulated site. A
//! server is stopped and its directory removed when the value is dropped, also when a
//! test panics. [`MariaServer::kill9`] and [`MariaServer::restart`] let fault tests crash
//! a server mid-operation and bring it back on the same data directory.
//!
//! [`TestSite`] is what tests use: a database on a private server, or, when
//! `FERRY_TEST_MYSQL_URL` names an existing server, a database of its own there.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors starting or driving a private server.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{program} not found\nhint: install Debian's mariadb-server (`apt-get install -y mariadb-server`, or `make deps`), or set FERRY_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/ to use a running server")]
    NotInstalled { program: String },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("i/o error while {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("database error while {what}: {source}")]
    Db {
        what: String,
        source: mysql_async::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// Options that shape a private server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// InnoDB buffer pool size in MiB.
    pub buffer_pool_mb: u32,
    /// Extra `--option=value` arguments for mariadbd.
    pub extra_args: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            buffer_pool_mb: 64,
            extra_args: Vec::new(),
        }
    }
}

/// Options that the template and every server share, so InnoDB accepts the copied files.
const COMMON_ARGS: &[&str] = &[
    "--innodb-log-file-size=32M",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
];

/// A running private `mariadbd`.
pub struct MariaServer {
    dir: PathBuf,
    port: u16,
    options: ServerOptions,
    child: Option<Child>,
    remove_on_drop: bool,
}

impl MariaServer {
    /// Starts a server with default options.
    pub fn start() -> Result<MariaServer, HarnessError> {
        Self::start_with(ServerOptions::default())
    }

    /// Starts a server on a fresh copy of the template.
    pub fn start_with(options: ServerOptions) -> Result<MariaServer, HarnessError> {
        let template = template_dir()?;
        let base = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("ferry-mariadb-")
            .tempdir_in(&base)
            .map_err(io_err("creating a server directory"))?
            .keep();
        copy_dir(&template, &dir.join("data")).map_err(io_err("copying the template"))?;
        let mut server = MariaServer {
            dir,
            port: 0,
            options,
            child: None,
            remove_on_drop: true,
        };
        server.launch()?;
        Ok(server)
    }

    /// Starts a server on an existing directory made by an earlier [`MariaServer`] that
    /// was told to [`keep`](MariaServer::keep) it (used by the demo across commands).
    pub fn start_in(dir: &Path, options: ServerOptions) -> Result<MariaServer, HarnessError> {
        if !dir.join("data").exists() {
            fs::create_dir_all(dir).map_err(io_err("creating the server directory"))?;
            copy_dir(&template_dir()?, &dir.join("data"))
                .map_err(io_err("copying the template"))?;
        }
        let mut server = MariaServer {
            dir: dir.to_path_buf(),
            port: 0,
            options,
            child: None,
            remove_on_drop: false,
        };
        server.launch()?;
        Ok(server)
    }

    /// Leaves the server running after this process exits (for the demo's shell
    /// script): writes the port to `DIR/port` and forgets the child process.
    /// [`stop_detached`] stops it later.
    pub fn detach(mut self) -> Result<u16, HarnessError> {
        fs::write(self.dir.join("port"), self.port.to_string())
            .map_err(io_err("writing the port file"))?;
        self.remove_on_drop = false;
        self.child = None;
        Ok(self.port)
    }

    /// Keeps the data directory when the server is dropped.
    pub fn keep(&mut self) {
        self.remove_on_drop = false;
    }

    /// The loopback TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's directory (data/, the socket, the error log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `mysql://` URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{}", self.port, db)
    }

    /// The URL of the server without a database.
    pub fn server_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/", self.port)
    }

    /// The process id of the running mariadbd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the server with SIGKILL, as a power cut or the OOM killer would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server cleanly (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with a pid we own and a valid signal number.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }

    /// Starts the server again on the same data directory (after [`kill9`](Self::kill9)
    /// or [`stop`](Self::stop)), on the same port when it is still free.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> Result<(), HarnessError> {
        let mariadbd = find_program("mariadbd")?;
        let mut last_error = String::new();
        for attempt in 0..5 {
            let port = if self.port != 0 && attempt == 0 {
                self.port
            } else {
                free_port()?
            };
            let log = self.dir.join("error.log");
            let _ = fs::remove_file(&log);
            let tmp = self.dir.join("tmp");
            fs::create_dir_all(&tmp).map_err(io_err("creating the server's tmpdir"))?;
            let mut cmd = Command::new(&mariadbd);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", self.dir.join("data").display()))
                .arg(format!(
                    "--socket={}",
                    self.dir.join("mysqld.sock").display()
                ))
                .arg(format!(
                    "--pid-file={}",
                    self.dir.join("mysqld.pid").display()
                ))
                .arg(format!("--log-error={}", log.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--user=root")
                .arg("--skip-name-resolve")
                .arg("--max-connections=500")
                .arg("--innodb-flush-log-at-trx-commit=2")
                .arg("--innodb-doublewrite=0")
                .arg(format!(
                    "--innodb-buffer-pool-size={}M",
                    self.options.buffer_pool_mb
                ))
                .args(COMMON_ARGS)
                .args(&self.options.extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = cmd.spawn().map_err(io_err("starting mariadbd"))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    last_error = tail(&log);
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && ping(port) {
                    self.port = port;
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = format!("not ready after 60 s\n{}", tail(&log));
                    break;
                }
                std::thread::sleep(Duration::from_millis(40));
            }
            if !last_error.contains("Address already in use") && !last_error.contains("bind") {
                break;
            }
        }
        Err(HarnessError::Failed {
            what: format!("starting mariadbd in {}", self.dir.display()),
            detail: last_error,
        })
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        if self.remove_on_drop {
            self.kill9();
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            self.stop();
        }
    }
}

/// Stops a server left running by [`MariaServer::detach`] in `dir`, and waits for it.
pub fn stop_detached(dir: &Path) -> Result<(), HarnessError> {
    let pid_file = dir.join("mysqld.pid");
    let Ok(text) = fs::read_to_string(&pid_file) else {
        return Ok(()); // not running
    };
    let Ok(pid) = text.trim().parse::<libc::pid_t>() else {
        return Err(HarnessError::Failed {
            what: format!("reading {}", pid_file.display()),
            detail: format!("not a process id: {text:?}"),
        });
    };
    // SAFETY: kill(2) with a pid read from the server's own pid file.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Answers whether the server accepts a MySQL handshake and a query.
fn ping(port: u16) -> bool {
    let url = format!("mysql://root@127.0.0.1:{port}/");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        use mysql_async::prelude::*;
        let Ok(opts) = mysql_async::Opts::from_url(&url) else {
            return false;
        };
        match mysql_async::Conn::new(opts).await {
            Ok(mut c) => {
                let ok = c.query_drop("SELECT 1").await.is_ok();
                let _ = c.disconnect().await;
                ok
            }
            Err(_) => false,
        }
    })
}

fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}

fn tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Finds a MariaDB program in `FERRY_MARIADB_BIN`, /usr/sbin, /usr/bin or PATH.
pub fn find_program(name: &str) -> Result<PathBuf, HarnessError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("FERRY_MARIADB_BIN") {
        dirs.push(d.into());
    }
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/bin".into());
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| HarnessError::NotInstalled {
            program: name.to_string(),
        })
}

/// The prepared data directory every server copies: made once per machine by
/// `mariadb-install-db`, published atomically by rename so concurrent test processes
/// never see a half-made one.
fn template_dir() -> Result<PathBuf, HarnessError> {
    let mariadbd = find_program("mariadbd")?;
    let version = Command::new(&mariadbd)
        .arg("--version")
        .output()
        .map_err(io_err("running mariadbd --version"))?;
    let version = String::from_utf8_lossy(&version.stdout);
    let tag: String = version
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let root = std::env::var_os("FERRY_MARIADB_TEMPLATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ferry-mariadb-template-{tag}-v1")));
    template_at(root)
}

/// Makes the template at `root` unless it is there. Each maker has a temporary
/// directory of its own (`--tmpdir`): makers running at once in the shared `/tmp` (a
/// fresh machine's first test binary, whose tests start together) collided on the
/// bootstrap's temporary tables, and some failed.
fn template_at(root: PathBuf) -> Result<PathBuf, HarnessError> {
    if root.join("mysql").is_dir() {
        return Ok(root);
    }
    let install = find_program("mariadb-install-db")?;
    let parent = root.parent().unwrap_or(Path::new("/tmp"));
    fs::create_dir_all(parent).map_err(io_err("creating the template's parent"))?;
    let work = tempfile::Builder::new()
        .prefix("ferry-template-")
        .tempdir_in(parent)
        .map_err(io_err("creating the template directory"))?;
    let data = work.path().join("data");
    let tmp = work.path().join("tmp");
    fs::create_dir_all(&tmp).map_err(io_err("creating the template's temporary directory"))?;
    let out = Command::new(&install)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--tmpdir={}", tmp.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg("--user=root")
        .args(COMMON_ARGS)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("running mariadb-install-db"))?;
    if !out.status.success() {
        return Err(HarnessError::Failed {
            what: "mariadb-install-db".into(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    match fs::rename(&data, &root) {
        Ok(()) => Ok(root),
        Err(_) if root.join("mysql").is_dir() => Ok(root), // another process won the race
        Err(e) => Err(io_err("publishing the template")(e)),
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// One simulated site's database for a test: its own private server, or its own
/// database on the server `FERRY_TEST_MYSQL_URL` names.
pub struct TestSite {
    /// The private server, when the site has one.
    pub server: Option<MariaServer>,
    /// The site's database URL.
    pub url: String,
    /// The site's database name.
    pub database: String,
}

impl TestSite {
    /// A fresh, empty database for the site called `name`.
    pub fn new(name: &str) -> Result<TestSite, HarnessError> {
        let database = format!("ferry_{}", name.replace('-', "_"));
        if let Ok(base) = std::env::var("FERRY_TEST_MYSQL_URL") {
            let unique = format!("{database}_{}", uuid::Uuid::new_v4().simple());
            let server_url = base.trim_end_matches('/').to_string();
            let server_url = match server_url.rfind('/') {
                Some(i) if i > "mysql://".len() => server_url[..i].to_string(),
                _ => server_url,
            };
            create_database(&format!("{server_url}/"), &unique)?;
            return Ok(TestSite {
                server: None,
                url: format!("{server_url}/{unique}"),
                database: unique,
            });
        }
        let server = MariaServer::start()?;
        create_database(&server.server_url(), &database)?;
        Ok(TestSite {
            url: server.url(&database),
            server: Some(server),
            database,
        })
    }

    /// The private server; fault tests need one.
    pub fn server_mut(&mut self) -> &mut MariaServer {
        self.server
            .as_mut()
            .expect("this test kills a server and needs a private one: unset FERRY_TEST_MYSQL_URL")
    }
}

impl Drop for TestSite {
    fn drop(&mut self) {
        if self.server.is_none() {
            let url = self.url.clone();
            let db = self.database.clone();
            let _ = std::thread::spawn(move || {
                run_sql_blocking(&url, &format!("DROP DATABASE IF EXISTS `{db}`"))
            })
            .join();
        }
    }
}

fn create_database(server_url: &str, name: &str) -> Result<(), HarnessError> {
    run_sql_blocking(
        server_url,
        &format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci"),
    )
}

/// Runs SQL on a fresh connection, blocking (for harness code outside a runtime).
pub fn run_sql_blocking(url: &str, sql: &str) -> Result<(), HarnessError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting a runtime"))?;
    rt.block_on(async {
        use mysql_async::prelude::*;
        let db = |source| HarnessError::Db {
            what: format!("running {sql:?}"),
            source,
        };
        let opts = mysql_async::Opts::from_url(url).map_err(|e| HarnessError::Failed {
            what: "parsing url".into(),
            detail: e.to_string(),
        })?;
        let mut c = mysql_async::Conn::new(opts).await.map_err(db)?;
        c.query_drop(sql).await.map_err(db)?;
        c.disconnect().await.map_err(db)?;
        Ok(())
    })
}

/// `program` (`mariadb`, `mariadb-dump`) with the connection arguments of `url` and
/// its database as the last argument.
fn client_for(program: &str, url: &str) -> Result<Command, HarnessError> {
    let opts = mysql_async::Opts::from_url(url).map_err(|e| HarnessError::Failed {
        what: "parsing url".into(),
        detail: e.to_string(),
    })?;
    let mut cmd = Command::new(find_program(program)?);
    cmd.arg("--no-defaults")
        .arg("--protocol=tcp")
        .arg(format!("--host={}", opts.ip_or_hostname()))
        .arg(format!("--port={}", opts.tcp_port()))
        .arg(format!("--user={}", opts.user().unwrap_or("root")))
        .args(opts.pass().map(|p| format!("--password={p}")))
        .arg("--default-character-set=utf8mb4");
    Ok(cmd)
}

/// Runs a client command to its end; an error names `what` and the client's stderr.
fn run_client(mut cmd: Command, what: String) -> Result<(), HarnessError> {
    let out = cmd
        .output()
        .map_err(io_err(format!("running the client for {what}")))?;
    if !out.status.success() {
        return Err(HarnessError::Failed {
            what,
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

fn database_of(url: &str) -> String {
    mysql_async::Opts::from_url(url)
        .ok()
        .and_then(|o| o.db_name().map(str::to_string))
        .unwrap_or_default()
}

/// Loads a SQL file (a dump or a fixture) into `url` with the `mariadb` client.
pub fn load_sql_file(url: &str, file: &Path) -> Result<(), HarnessError> {
    let mut cmd = client_for("mariadb", url)?;
    let input = fs::File::open(file).map_err(io_err(format!("opening {}", file.display())))?;
    cmd.arg(database_of(url)).stdin(input);
    run_client(cmd, format!("loading {}", file.display()))
}

/// A backup of the database at `url` into `out` with `mariadb-dump`: every table with
/// its rows and triggers, in one consistent snapshot.
pub fn dump_database(url: &str, out: &Path) -> Result<(), HarnessError> {
    let mut cmd = client_for("mariadb-dump", url)?;
    let file = fs::File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
    cmd.args(["--single-transaction", "--triggers"])
        .arg(database_of(url))
        .stdout(file);
    run_client(cmd, format!("dumping into {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 4, seen when the template had been removed): the tests of one
    /// binary start together and each made the missing template; their bootstraps
    /// shared `/tmp` and some failed ("Unknown table 'mysql.tmp_user_sys'").
    #[test]
    fn makers_of_one_template_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("template");
        let makers: Vec<_> = (0..3)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || template_at(root))
            })
            .collect();
        for m in makers {
            let made = m.join().unwrap().expect("every maker succeeds");
            assert_eq!(made, root);
        }
        assert!(root.join("mysql").is_dir());
    }
}
