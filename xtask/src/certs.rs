//! Development certificates: a project-local CA and the leaves the stack needs, made once with
//! the `openssl` command and reused. Keys never leave `.portcullis/certs/` (ignored by git).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::stage::{cmd, output};
use crate::tools::state_dir;

pub fn dir() -> PathBuf {
    state_dir().join("certs")
}

/// The leaves: file stem, extended key usage. The origin admits exactly the two client
/// certificates (Envoy's and the Worker's); server certificates cannot be used as clients.
const LEAVES: [(&str, &str); 5] = [
    ("envoy", "serverAuth"),
    ("origin", "serverAuth"),
    ("postgres", "serverAuth"),
    ("envoy-client", "clientAuth"),
    ("worker-client", "clientAuth"),
];

pub fn ensure() -> Result<PathBuf> {
    let dir = dir();
    std::fs::create_dir_all(&dir)?;
    let ca = dir.join("ca.crt");
    if !ca.exists() {
        openssl(&dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key"])?;
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-sha256",
                "-days",
                "825",
                "-subj",
                "/CN=Portcullis development CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-out",
                "ca.crt",
            ],
        )?;
    }
    for (name, usage) in LEAVES {
        if dir.join(format!("{name}.crt")).exists() {
            continue;
        }
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let ext = format!("{name}.ext");
        // genpkey writes PKCS#8, which Envoy and rustls both read.
        openssl(&dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &key])?;
        openssl(&dir, &["req", "-new", "-key", &key, "-subj", &format!("/CN={name}"), "-out", &csr])?;
        std::fs::write(
            dir.join(&ext),
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage={usage}\nsubjectAltName=DNS:localhost,DNS:db,DNS:origin,IP:127.0.0.1,IP:::1\n"
            ),
        )?;
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                // Mozilla's "intermediate" profile allows certificates of at most 366 days.
                "365",
                "-sha256",
                "-extfile",
                &ext,
                "-out",
                &format!("{name}.crt"),
            ],
        )?;
        std::fs::remove_file(dir.join(&csr))?;
        std::fs::remove_file(dir.join(&ext))?;
    }
    Ok(dir)
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    output(cmd("openssl", args).current_dir(dir)).map(|_| ()).with_context(|| format!("openssl {}", args.join(" ")))
}
