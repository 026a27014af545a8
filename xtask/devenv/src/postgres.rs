//! Hardened PostgreSQL clusters from the Debian server binaries: the dev cluster of
//! `cargo xtask db` (127.0.0.1:55432), the throwaway clusters `cargo xtask test` starts, and
//! [`TestPostgres`], which a plain `cargo test` starts for its own process. All use the repo's
//! `migrations/postgres/hardening.conf` and `pg_hba.conf`, the project CA, the bootstrap SQL and
//! the origin's migrations — the same hardening the compose image gets.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::{certs, random_hex, root, state_dir};

/// How a cluster's migrations run: the origin's `migrate` command, by `cargo run` (the xtask)
/// or from a built binary (a test's `CARGO_BIN_EXE_portcullis-origin`).
pub enum Migrate {
    Cargo,
    Binary(PathBuf),
}

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const DEV_PORT: u16 = 55432;
pub const DATABASE: &str = "portcullis";

/// A cluster on disk: where it lives and how to reach it.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    /// Relaxed durability (fsync off): for throwaway test clusters only.
    pub throwaway: bool,
}

impl Cluster {
    pub fn dev() -> Self {
        Self { dir: state_dir().join("db/dev"), port: DEV_PORT, throwaway: false }
    }

    /// A cluster for one test run, on a free port, in its own directory.
    pub fn for_tests() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(Self { dir: state_dir().join(format!("db/test-{port}")), port, throwaway: true })
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn credentials_file(&self) -> PathBuf {
        self.dir.join("credentials.json")
    }

    pub fn ca(&self) -> PathBuf {
        certs::dir().join("ca.crt")
    }

    /// Credentials generated at init: (owner password, app password).
    fn passwords(&self) -> Result<(String, String)> {
        let text = std::fs::read_to_string(self.credentials_file())
            .with_context(|| format!("{} has no credentials: run `cargo xtask db reset`", self.dir.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        let get = |k: &str| value[k].as_str().map(str::to_owned).context("credentials file is incomplete");
        Ok((get("owner_password")?, get("app_password")?))
    }

    /// `postgres://` URL of a role over TLS, verifying the server against the project CA.
    pub fn url(&self, role: Role) -> Result<String> {
        let (owner, app) = self.passwords()?;
        let (user, password) = match role {
            Role::Owner => ("portcullis_owner", owner),
            Role::App => ("portcullis_app", app),
        };
        Ok(format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{DATABASE}?sslmode=verify-full&sslrootcert={}",
            self.port,
            self.ca().display()
        ))
    }

    pub fn is_running(&self) -> bool {
        self.data().join("postmaster.pid").exists() && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// Creates the cluster (if absent), starts it, bootstraps roles and runs the migrations
    /// with `migrate`.
    pub fn start(&self, migrate: &Migrate) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        if TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            bail!("127.0.0.1:{} is in use by something else; stop it first", self.port);
        }
        if !self.data().join("PG_VERSION").exists() {
            self.init()?;
        }
        // The current dev certificates, also in a cluster made before they were (re)issued.
        self.install_certs(&certs::ensure()?)?;
        std::fs::create_dir_all(self.socket_dir())?;
        chown_postgres(&self.socket_dir())?;
        as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .args(["-D"])
            .arg(self.data())
            .args(["-l"])
            .arg(self.log())
            .args(["-w", "-t", "30", "start"])
            .status()
            .context("starting pg_ctl")?
            .success()
            .then_some(())
            .with_context(|| {
                format!(
                    "PostgreSQL did not start; its log ({}):\n{}",
                    self.log().display(),
                    crate::tail_file(&self.log(), 25)
                )
            })?;
        self.bootstrap()?;
        self.migrate(migrate)
    }

    pub fn stop(&self) -> Result<()> {
        if !self.data().join("postmaster.pid").exists() {
            return Ok(());
        }
        let status = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .args(["-D"])
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .status()?;
        if !status.success() {
            bail!("pg_ctl stop failed for {}", self.dir.display());
        }
        Ok(())
    }

    pub fn destroy(&self) -> Result<()> {
        self.stop()?;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)?;
        }
        Ok(())
    }

    /// The server's certificate and key live in the data directory, owned by postgres, 0600.
    fn install_certs(&self, certs: &Path) -> Result<()> {
        for (from, to) in [("postgres.crt", "server.crt"), ("postgres.key", "server.key"), ("ca.crt", "ca.crt")] {
            let target = self.data().join(to);
            if std::fs::read(&target).ok() == std::fs::read(certs.join(from)).ok() {
                continue;
            }
            std::fs::copy(certs.join(from), &target)?;
            chown_postgres(&target)?;
            set_mode(&target, 0o600)?;
        }
        Ok(())
    }

    fn init(&self) -> Result<()> {
        let certs = certs::ensure()?;
        std::fs::create_dir_all(&self.dir)?;
        let data = self.data();
        std::fs::create_dir_all(&data)?;
        // The superuser password is never used (it logs in by peer over the socket only) but
        // SCRAM initdb needs one.
        let pwfile = self.dir.join("superuser.pw");
        std::fs::write(&pwfile, random_hex(24)?)?;
        chown_postgres(&self.dir)?;
        chown_postgres(&data)?;
        chown_postgres(&pwfile)?;
        let status = as_postgres(&format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(&data)
            .args(["--auth=scram-sha-256", "--username=postgres", "--encoding=UTF8", "--locale=C.UTF-8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(std::process::Stdio::null())
            .status()?;
        std::fs::remove_file(&pwfile)?;
        if !status.success() {
            bail!("initdb failed in {}", data.display());
        }
        self.install_certs(&certs)?;
        let repo = root().join("migrations/postgres");
        let mut settings = format!(
            "\n# --- Portcullis ({}) ---\ninclude '{}'\nhba_file = '{}'\n\
             listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n",
            if self.throwaway { "test cluster" } else { "dev cluster" },
            repo.join("hardening.conf").display(),
            repo.join("pg_hba.conf").display(),
            self.port,
            self.socket_dir().display(),
        );
        if self.throwaway {
            settings.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(&settings);
        std::fs::write(&conf, text)?;

        let credentials = json!({ "owner_password": random_hex(24)?, "app_password": random_hex(24)? });
        std::fs::write(self.credentials_file(), serde_json::to_string_pretty(&credentials)?)?;
        set_mode(&self.credentials_file(), 0o600)
    }

    /// Runs `migrations/bootstrap.sql` as the superuser over the Unix socket (idempotent).
    fn bootstrap(&self) -> Result<()> {
        let (owner, app) = self.passwords()?;
        let out = as_postgres(&format!("{PG_BIN}/psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-f"])
            .arg(root().join("migrations/bootstrap.sql"))
            .env("PORTCULLIS_OWNER_PASSWORD", owner)
            .env("PORTCULLIS_APP_PASSWORD", app)
            .env("PORTCULLIS_DB_NAME", DATABASE)
            .output()?;
        if !out.status.success() {
            bail!("bootstrap.sql failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The origin's `migrate` command, as the owner role, over TLS.
    fn migrate(&self, migrate: &Migrate) -> Result<()> {
        let mut command = match migrate {
            Migrate::Cargo => {
                let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
                command.args(["run", "--quiet", "-p", "portcullis-origin", "--"]).current_dir(root());
                command
            }
            Migrate::Binary(binary) => Command::new(binary),
        };
        let out = command
            .arg("migrate")
            .env("PORTCULLIS_MIGRATION_DATABASE_URL", self.url(Role::Owner)?)
            .output()
            .context("running the origin's migrations")?;
        if !out.status.success() {
            bail!("the origin's migrations failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The app role's URL without TLS, which the server must refuse.
    pub fn plain_url(&self) -> Result<String> {
        Ok(self.url(Role::App)?.replace("sslmode=verify-full", "sslmode=disable"))
    }

    /// Details for tests, written where `PORTCULLIS_TEST_PG` points.
    pub fn describe(&self) -> Result<serde_json::Value> {
        Ok(json!({
            "app_url": self.url(Role::App)?,
            "owner_url": self.url(Role::Owner)?,
            "plain_url": self.plain_url()?,
            "log": self.log(),
            "port": self.port,
        }))
    }

    pub fn psql(&self) -> Result<()> {
        let status =
            Command::new(format!("{PG_BIN}/psql")).arg(self.url(Role::Owner)?).status().context("starting psql")?;
        if !status.success() {
            bail!("psql exited with {status}");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Role {
    Owner,
    App,
}

/// PostgreSQL refuses to run as root: as root, `program` runs as the `postgres` user (and the
/// cluster's files are theirs); as anyone else, as that user.
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    // `/proc/self` belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}

fn chown_postgres(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status()?;
    if !status.success() {
        bail!("chown postgres:postgres {} failed", path.display());
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Whether pgaudit for PostgreSQL 15 is installed.
fn pgaudit_installed() -> bool {
    Path::new("/usr/share/postgresql/15/extension/pgaudit.control").exists()
}

/// Ensures the Debian packages the clusters need (pgaudit); quiet when present.
pub fn ensure_packages() -> Result<()> {
    if pgaudit_installed() {
        return Ok(());
    }
    if !Path::new(PG_BIN).join("postgres").exists() {
        bail!("PostgreSQL 15 server binaries are missing at {PG_BIN} (Debian package postgresql-15)");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "postgresql-15-pgaudit"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!(
            "installing postgresql-15-pgaudit failed (needs root and the Debian package index; try `apt-get update`)"
        );
    }
    Ok(())
}

/// A hardened PostgreSQL of this process's own, for tests run by a plain `cargo test`: a copy of
/// a template cluster (made once per set of migrations, then reused), served by a `postgres`
/// child that the kernel stops when this process ends, however it ends.
pub struct TestPostgres {
    pub app_url: String,
    pub owner_url: String,
    /// The app role's URL without TLS: the server must refuse it.
    pub plain_url: String,
    pub port: u16,
    pub log: PathBuf,
}

impl TestPostgres {
    /// Starts this process's cluster, migrated by `origin` (`env!("CARGO_BIN_EXE_portcullis-origin")`).
    pub fn start(origin: &Path) -> Result<Self> {
        if !pgaudit_installed() || !Path::new(PG_BIN).join("postgres").exists() {
            bail!(
                "these tests need the PostgreSQL 15 server with pgaudit: run `cargo xtask setup` \
                 (or `apt-get install postgresql-15 postgresql-15-pgaudit`)"
            );
        }
        let base = state_dir().join("db");
        std::fs::create_dir_all(&base)?;
        remove_abandoned(&base);
        let template = template(&base, origin)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let cluster = Cluster { dir: base.join(format!("cargo-test-{}", std::process::id())), port, throwaway: true };
        if cluster.dir.exists() {
            std::fs::remove_dir_all(&cluster.dir)?;
        }
        let copied = Command::new("cp").arg("-a").arg(&template).arg(&cluster.dir).status()?;
        if !copied.success() {
            bail!("copying the template cluster {} failed", template.display());
        }
        let _ = std::fs::remove_file(cluster.data().join("postmaster.pid"));
        cluster.install_certs(&certs::ensure()?)?;
        serve_until_exit(&cluster)?;
        Ok(Self {
            app_url: cluster.url(Role::App)?,
            plain_url: cluster.plain_url()?,
            owner_url: cluster.url(Role::Owner)?,
            port,
            log: cluster.log(),
        })
    }
}

/// The directory of the migrated template for the current migrations and hardening, made under
/// a lock so test binaries that start at once make it once.
fn template(base: &Path, origin: &Path) -> Result<PathBuf> {
    let key = template_key()?;
    let lock = std::fs::File::create(base.join("template.lock"))?;
    // Released when `lock` drops.
    lock.lock().with_context(|| format!("locking {}", base.join("template.lock").display()))?;
    let dir = base.join(format!("template-{key:016x}"));
    if dir.join("ready").exists() {
        return Ok(dir);
    }
    // Older templates are for other migrations.
    for entry in std::fs::read_dir(base)?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("template-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cluster = Cluster { dir, port, throwaway: true };
    let made = cluster.start(&Migrate::Binary(origin.to_path_buf()));
    cluster.stop()?;
    made.context("making the template test cluster")?;
    std::fs::write(cluster.dir.join("ready"), "")?;
    Ok(cluster.dir)
}

/// What a template depends on: the migrations, the hardening and the bootstrap SQL.
fn template_key() -> Result<u64> {
    use std::hash::{Hash, Hasher};
    fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() { files(&path, out)? } else { out.push(path) }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    files(&root().join("migrations"), &mut paths)?;
    paths.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in paths {
        path.hash(&mut hasher);
        std::fs::read(&path)?.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

/// Starts `postgres` on `cluster` as a child that gets SIGINT (a fast shutdown) when this
/// process ends: the child is spawned by a thread that lives as long as the process, since the
/// kernel's parent-death signal follows the spawning thread.
#[allow(unsafe_code)]
fn serve_until_exit(cluster: &Cluster) -> Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(cluster.socket_dir())?;
    chown_postgres(&cluster.dir)?;
    let log = std::fs::File::create(cluster.log())?;
    let mut command = Command::new(format!("{PG_BIN}/postgres"));
    command
        .arg("-D")
        .arg(cluster.data())
        .args(["-p", &cluster.port.to_string(), "-k"])
        .arg(cluster.socket_dir())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if is_root() {
        let (uid, gid) = postgres_ids()?;
        command.uid(uid).gid(gid);
    }
    // SAFETY: prctl is async-signal-safe; it runs in the child after its user changed (a user
    // change would clear the setting).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (started, outcome) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("test-postgres".into()).spawn(move || match command.spawn() {
        Ok(mut child) => {
            let _ = started.send(Ok(()));
            let _ = child.wait();
        }
        Err(err) => {
            let _ = started.send(Err(err));
        }
    })?;
    outcome.recv().context("the postgres thread ended")?.context("starting postgres")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ready = Command::new(format!("{PG_BIN}/pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &cluster.port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "PostgreSQL did not start; its log ({}):\n{}",
                cluster.log().display(),
                crate::tail_file(&cluster.log(), 25)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn postgres_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        if !out.status.success() {
            bail!("there is no postgres user (Debian package postgresql-15 makes it)");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

/// Removes the copies of test processes that are gone.
fn remove_abandoned(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("cargo-test-").and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
