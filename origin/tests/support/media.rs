//! Media servers for the executor's tests: real HTTPS servers (a CA made per test binary by
//! rcgen, a leaf for the test host names) on loopback addresses, and a name → address table
//! standing in for DNS, so a test decides what a media host name resolves to.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use portcullis_origin::media::{Lookup, MediaFetcher, MediaSettings};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The address the "public" media servers listen on; the tests open exactly this one with
/// `PORTCULLIS_MEDIA_ALLOW_NETWORKS`, so 127.0.0.1 and the rest of loopback stay closed.
pub const MEDIA_IP: &str = "127.0.0.2";

/// Host names the test certificate covers (and [`MEDIA_IP`] itself, for URLs that name it).
pub const NAMES: [&str; 6] =
    ["media.example", "public.example", "internal.example", "rebind.example", "slow.example", MEDIA_IP];

pub struct TestCa {
    pub ca_pem: String,
    pub leaf_der: Vec<u8>,
    pub leaf_key_der: Vec<u8>,
}

/// One CA and leaf per test binary.
pub fn ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Portcullis media test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(NAMES.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
        TestCa { ca_pem: ca_cert.pem(), leaf_der: leaf.der().to_vec(), leaf_key_der: leaf_key.serialize_der() }
    })
}

/// Serves `router` over HTTPS (the test leaf) on `ip`, on an ephemeral port.
pub async fn serve_https(router: Router, ip: &str) -> SocketAddr {
    let ca = ca();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(ca.leaf_der.clone())],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ca.leaf_key_der.clone().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    router.clone().oneshot(request.map(Body::new))
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    addr
}

/// DNS for the tests: each name answers the addresses given; other names do not resolve.
pub struct StaticLookup(pub HashMap<String, Vec<IpAddr>>);

impl StaticLookup {
    pub fn new(entries: &[(&str, &[&str])]) -> Arc<Self> {
        Arc::new(Self(
            entries
                .iter()
                .map(|(name, addrs)| ((*name).to_owned(), addrs.iter().map(|a| a.parse().unwrap()).collect()))
                .collect(),
        ))
    }
}

impl Lookup for StaticLookup {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + '_>> {
        let found = self.0.get(host).cloned();
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host in the test table"))
        })
    }
}

/// Media settings that trust the test CA and open [`MEDIA_IP`] only, with short limits.
pub fn settings() -> MediaSettings {
    MediaSettings {
        allowed_hosts: None,
        allowed_networks: vec![format!("{MEDIA_IP}/32").parse().unwrap()],
        max_bytes: 64 * 1024,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(700),
        total_timeout: Duration::from_secs(2),
        extra_roots_pem: Some(ca().ca_pem.clone().into_bytes()),
    }
}

/// A fetcher with [`settings`] whose every test name resolves to [`MEDIA_IP`].
pub fn fetcher() -> MediaFetcher {
    let names: Vec<(&str, &[&str])> = NAMES[..5].iter().map(|n| (*n, &[MEDIA_IP][..])).collect();
    MediaFetcher::with_lookup(settings(), StaticLookup::new(&names)).unwrap()
}
