//! `cargo xtask db`: the dev cluster (127.0.0.1:55432). The clusters themselves are
//! `portcullis-devenv`'s, which the tests share.

use anyhow::{Result, bail};

pub use portcullis_devenv::postgres::{Cluster, Migrate, Role, ensure_packages};

use crate::stage;

/// `cargo xtask db start|stop|reset|psql` on the dev cluster.
pub fn command(action: &str) -> Result<()> {
    let cluster = Cluster::dev();
    match action {
        "start" => stage::stage("db: start the dev cluster on 127.0.0.1:55432", || {
            cluster.start(&Migrate::Cargo)?;
            println!("    app role:   {}", redact(&cluster.url(Role::App)?));
            println!("    owner role: {}", redact(&cluster.url(Role::Owner)?));
            println!("    credentials: {}", cluster.credentials_file().display());
            Ok(())
        }),
        "stop" => stage::stage("db: stop the dev cluster", || cluster.stop()),
        "reset" => stage::stage("db: recreate the dev cluster", || {
            cluster.destroy()?;
            cluster.start(&Migrate::Cargo)
        }),
        "psql" => {
            cluster.start(&Migrate::Cargo)?;
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
