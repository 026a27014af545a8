//! Hardened PostgreSQL clusters from the Debian server binaries: the dev cluster of
//! `cargo xtask db` (127.0.0.1:55432) and the throwaway clusters tests start. Both use the
//! repo's `migrations/postgres/hardening.conf` and `pg_hba.conf`, the project CA, the bootstrap
//! SQL and the origin's migrations — the same hardening the compose image gets.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::stage::{cmd, exec, output, root};
use crate::tools::{random_hex, state_dir};
use crate::{certs, stage};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
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

    fn credentials_file(&self) -> PathBuf {
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

    /// Creates the cluster (if absent), starts it, bootstraps roles and runs migrations.
    pub fn start(&self) -> Result<()> {
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
                    crate::tools::tail_file(&self.log(), 25)
                )
            })?;
        self.bootstrap()?;
        self.migrate()
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
    fn migrate(&self) -> Result<()> {
        exec(
            cmd("cargo", &["run", "--quiet", "-p", "portcullis-origin", "--", "migrate"])
                .env("PORTCULLIS_MIGRATION_DATABASE_URL", self.url(Role::Owner)?),
        )
        .context("running the origin's migrations")
    }

    /// Details for tests, written where `PORTCULLIS_TEST_PG` points.
    pub fn describe(&self) -> Result<serde_json::Value> {
        Ok(json!({
            "app_url": self.url(Role::App)?,
            "owner_url": self.url(Role::Owner)?,
            "plain_url": self.url(Role::App)?.replace("sslmode=verify-full", "sslmode=disable"),
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

fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--", program]);
    command
}

fn chown_postgres(path: &Path) -> Result<()> {
    output(Command::new("chown").args(["postgres:postgres"]).arg(path)).map(|_| ())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `cargo xtask db start|stop|reset|psql` on the dev cluster.
pub fn command(action: &str) -> Result<()> {
    let cluster = Cluster::dev();
    match action {
        "start" => stage::stage("db: start the dev cluster on 127.0.0.1:55432", || {
            cluster.start()?;
            println!("    app role:   {}", redact(&cluster.url(Role::App)?));
            println!("    owner role: {}", redact(&cluster.url(Role::Owner)?));
            println!("    credentials: {}", cluster.credentials_file().display());
            Ok(())
        }),
        "stop" => stage::stage("db: stop the dev cluster", || cluster.stop()),
        "reset" => stage::stage("db: recreate the dev cluster", || {
            cluster.destroy()?;
            cluster.start()
        }),
        "psql" => {
            cluster.start()?;
            cluster.psql()
        }
        other => bail!("unknown db action {other:?}: use start, stop, reset or psql"),
    }
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) => match url[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:…{}", &url[..scheme + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// Ensures the Debian packages the clusters need (pgaudit); quiet when present.
pub fn ensure_packages() -> Result<()> {
    let installed = Path::new("/usr/share/postgresql/15/extension/pgaudit.control").exists();
    if installed {
        return Ok(());
    }
    if !Path::new(PG_BIN).join("postgres").exists() {
        bail!("PostgreSQL 15 server binaries are missing at {PG_BIN} (Debian package postgresql-15)");
    }
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "postgresql-15-pgaudit"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing postgresql-15-pgaudit (needs root and the Debian package index; try `apt-get update`)")
}
