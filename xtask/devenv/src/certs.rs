//! Development certificates: a project-local CA and the leaves the stack needs, issued with
//! `rcgen` and reused. Keys never leave `.portcullis/certs/` (ignored by git).
//!
//! Each leaf names its own service only (and, for the servers, the loopback names local
//! clients reach them by), with one extended key usage: a server's key cannot act as a client
//! of the origin, a client's cannot serve, and Envoy accepts the origin only under the name
//! `origin`, so the database's or Envoy's key cannot stand in for it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::state_dir;

pub fn dir() -> PathBuf {
    state_dir().join("certs")
}

/// Written beside the certificates; a different text means they were issued by an older layout
/// and are issued again (CA included).
const LAYOUT: &str = "5: rcgen, positive serials, leaves without basicConstraints and with an AKI, one service per leaf, envoy-client and worker-client";

/// Loopback names a local client uses for a server.
const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A leaf: file stem, whether it serves (else it is a client), its service's own names.
struct Leaf {
    stem: &'static str,
    server: bool,
    names: &'static [&'static str],
}

const LEAVES: [Leaf; 5] = [
    // The public edge: users reach it as localhost.
    Leaf { stem: "envoy", server: true, names: &["envoy"] },
    // Envoy checks the name `origin` (envoy.yaml's `sni` and SAN match).
    Leaf { stem: "origin", server: true, names: &["origin"] },
    // `db` in docker compose (sslmode=verify-full checks it there).
    Leaf { stem: "postgres", server: true, names: &["db"] },
    Leaf { stem: "envoy-client", server: false, names: &["envoy-client"] },
    Leaf { stem: "worker-client", server: false, names: &["worker-client"] },
];

pub fn ensure() -> Result<PathBuf> {
    let dir = dir();
    let layout = dir.join("LAYOUT");
    let complete = std::fs::read_to_string(&layout).is_ok_and(|text| text.trim() == LAYOUT)
        && std::iter::once("ca")
            .chain(LEAVES.iter().map(|l| l.stem))
            .all(|stem| dir.join(format!("{stem}.crt")).exists());
    if complete {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)?;
    issue(&dir).context("issuing the development certificates")?;
    std::fs::write(&layout, format!("{LAYOUT}\n"))?;
    Ok(dir)
}

fn issue(dir: &std::path::Path) -> Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "Portcullis development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.serial_number = Some(serial()?);
    ca.not_before = now - time::Duration::minutes(5);
    ca.not_after = now + time::Duration::days(825);
    let ca_cert = ca.self_signed(&ca_key)?;
    // The CA's key is not kept: every leaf is issued now, and nothing else may be.
    write(dir, "ca.crt", &ca_cert.pem())?;
    let _ = std::fs::remove_file(dir.join("ca.key"));
    let _ = std::fs::remove_file(dir.join("ca.srl"));

    for leaf in &LEAVES {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, leaf.stem);
        // No basicConstraints at all: rcgen's explicit `CA:FALSE` encodes the default value,
        // which DER forbids and strict parsers (Python's cryptography) reject.
        params.is_ca = IsCa::NoCa;
        // The issuer's key identifier: path validators (sslyze's) require it on a leaf.
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![if leaf.server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        let names = leaf.names.iter().chain(if leaf.server { &LOOPBACK[..] } else { &[] });
        params.subject_alt_names = names
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*name).try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.serial_number = Some(serial()?);
        params.not_before = now - time::Duration::minutes(5);
        // Mozilla's "intermediate" profile allows certificates of at most 366 days.
        params.not_after = now + time::Duration::days(365);
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        write(dir, &format!("{}.crt", leaf.stem), &cert.pem())?;
        // PKCS#8, which Envoy, rustls, PostgreSQL and Node all read.
        write(dir, &format!("{}.key", leaf.stem), &key.serialize_pem())?;
    }
    Ok(())
}

/// 16 random bytes, positive as RFC 5280 requires (rcgen's own may have the sign bit set, which
/// X.509 parsers read as a negative serial and reject).
fn serial() -> Result<rcgen::SerialNumber> {
    let mut bytes = crate::random_bytes(16)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(())
}
