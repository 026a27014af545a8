//! The media fetcher under attack: names that resolve to internal addresses (loopback, RFC 1918,
//! link-local metadata, IPv6 loopback and its IPv4-mapped form), a public-looking server that
//! redirects inwards, slow and endless servers, oversized media. Each server here is a real
//! HTTPS server; "DNS" is a table the test fills in. What the job's owner would read is checked
//! to name no address, port or URL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use portcullis_origin::media::{FetchError, MediaFetcher, MediaSettings};
use support::media::{MEDIA_IP, StaticLookup, fetcher, serve_https, settings};
use tokio::net::TcpListener;

/// A listener that counts the connections reaching it (and answers none).
async fn counting_listener(ip: &str, port: u16) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind((ip, port)).await.unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    count
}

/// A loopback port nothing listens on (yet).
async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port()
}

fn owner_text(err: &FetchError) -> String {
    let text = err.to_string();
    for leak in ["127.", "10.0", "169.254", "::1", "ffff", ".example", "https://", "Error", "error:"] {
        assert!(!text.contains(leak), "the owner's text names {leak:?}: {text}");
    }
    text
}

#[tokio::test]
async fn names_resolving_to_internal_addresses_are_never_connected_to() {
    // One port with listeners on both loopbacks: whatever the client tried, they would count it.
    let port = free_port().await;
    let v4 = counting_listener("127.0.0.1", port).await;
    let v6 = counting_listener("::1", port).await;
    for answer in ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254"] {
        let fetcher =
            MediaFetcher::with_lookup(settings(), StaticLookup::new(&[("rebind.example", &[answer])])).unwrap();
        let started = Instant::now();
        let err = fetcher.fetch(&format!("https://rebind.example:{port}/a.mp3"), "t").await.unwrap_err();
        assert_eq!(err, FetchError::NotPublic, "{answer}");
        assert!(started.elapsed() < Duration::from_secs(1), "refused before connecting, not timed out ({answer})");
        owner_text(&err);
    }
    // A name with a public and a private answer: only the public one is tried (it is closed
    // here), never the private one.
    let mixed = MediaFetcher::with_lookup(
        settings(),
        StaticLookup::new(&[("rebind.example", &["127.0.0.1", "::1", MEDIA_IP])]),
    )
    .unwrap();
    let err = mixed.fetch(&format!("https://rebind.example:{port}/a.mp3"), "t").await.unwrap_err();
    assert_eq!(err, FetchError::Unreachable);
    assert_eq!((v4.load(Ordering::SeqCst), v6.load(Ordering::SeqCst)), (0, 0), "no connection reached loopback");

    // IP literals are checked too (the client would not resolve them).
    for literal in ["127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "169.254.169.254", "10.0.0.1", "0.0.0.0"] {
        let err = fetcher().fetch(&format!("https://{literal}:{port}/a"), "t").await.unwrap_err();
        assert_eq!(err, FetchError::NotPublic, "{literal}");
    }
    assert_eq!((v4.load(Ordering::SeqCst), v6.load(Ordering::SeqCst)), (0, 0));
}

#[tokio::test]
async fn a_public_server_redirecting_inwards_is_not_followed_there() {
    let inner_port = free_port().await;
    let inner = counting_listener("127.0.0.1", inner_port).await;
    let redirect = move |to: String| async move { (StatusCode::FOUND, [(header::LOCATION, to)]).into_response() };
    let public = serve_https(
        Router::new()
            .route("/to-name", get(move || redirect(format!("https://internal.example:{inner_port}/latest/meta-data"))))
            .route("/to-literal", get(move || redirect(format!("https://127.0.0.1:{inner_port}/admin"))))
            .route("/to-metadata", get(move || redirect("https://169.254.169.254/latest/meta-data/".to_owned())))
            .route("/to-plain-http", get(move || redirect("http://public.example/media.mp3".to_owned())))
            .route("/loop", get(move || redirect("/loop".to_owned())))
            .route("/relative", get(move || redirect("/media.mp3".to_owned())))
            .route("/media.mp3", get(|| async { "RIFF-media" })),
        MEDIA_IP,
    )
    .await;
    let lookup = StaticLookup::new(&[("public.example", &[MEDIA_IP]), ("internal.example", &["127.0.0.1"])]);
    let fetcher = MediaFetcher::with_lookup(settings(), lookup).unwrap();
    let url = |path: &str| format!("https://public.example:{}{path}", public.port());

    assert_eq!(fetcher.fetch(&url("/to-name"), "t").await, Err(FetchError::NotPublic));
    assert_eq!(fetcher.fetch(&url("/to-literal"), "t").await, Err(FetchError::NotPublic));
    assert_eq!(fetcher.fetch(&url("/to-metadata"), "t").await, Err(FetchError::NotPublic));
    assert_eq!(fetcher.fetch(&url("/to-plain-http"), "t").await, Err(FetchError::NotAllowed));
    assert_eq!(fetcher.fetch(&url("/loop"), "t").await, Err(FetchError::TooManyRedirects));
    assert_eq!(inner.load(Ordering::SeqCst), 0, "no connection reached the internal listener");
    // A redirect that stays public is followed.
    assert_eq!(fetcher.fetch(&url("/relative"), "t").await.unwrap(), b"RIFF-media");
}

#[tokio::test]
async fn the_allow_list_names_the_only_media_hosts() {
    let server = serve_https(Router::new().route("/m", get(|| async { "media" })), MEDIA_IP).await;
    let lookup = StaticLookup::new(&[("media.example", &[MEDIA_IP]), ("public.example", &[MEDIA_IP])]);
    let only_media = MediaSettings { allowed_hosts: Some(vec!["media.example".into()]), ..settings() };
    let fetcher = MediaFetcher::with_lookup(only_media, lookup).unwrap();
    let port = server.port();
    assert_eq!(fetcher.fetch(&format!("https://media.example:{port}/m"), "t").await.unwrap(), b"media");
    assert_eq!(fetcher.fetch(&format!("https://public.example:{port}/m"), "t").await, Err(FetchError::NotAllowed));
    assert_eq!(fetcher.fetch(&format!("http://media.example:{port}/m"), "t").await, Err(FetchError::NotAllowed));
    assert_eq!(
        fetcher.fetch(&format!("https://user:pw@media.example:{port}/m"), "t").await,
        Err(FetchError::NotAllowed)
    );
}

/// A body that sends one byte every `every`, forever.
fn trickle(every: Duration) -> Response {
    let stream = futures_util::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some((Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"x")), ()))
    });
    Body::from_stream(stream).into_response()
}

/// A body of `chunk`-sized pieces, forever, with no length declared.
fn endless(chunk: usize) -> Response {
    let piece = axum::body::Bytes::from(vec![b'm'; chunk]);
    let stream = futures_util::stream::unfold(piece, |piece| async move {
        tokio::task::yield_now().await;
        Some((Ok::<_, std::io::Error>(piece.clone()), piece))
    });
    Body::from_stream(stream).into_response()
}

#[tokio::test]
async fn slow_endless_and_oversized_media_end_in_bounded_time_and_memory() {
    let server = serve_https(
        Router::new()
            .route("/trickle", get(|| async { trickle(Duration::from_millis(100)) }))
            .route("/silent", get(|| async { std::future::pending::<&'static str>().await }))
            .route("/endless", get(|| async { endless(16 * 1024) }))
            .route(
                "/declared-huge",
                get(|| async {
                    let mut response = endless(16 * 1024);
                    response.headers_mut().insert(header::CONTENT_LENGTH, "10000000000".parse().unwrap());
                    response
                }),
            )
            .route("/just-fits", get(|| async { vec![b'a'; 64 * 1024] })),
        MEDIA_IP,
    )
    .await;
    let url = |path: &str| format!("https://slow.example:{}{path}", server.port());
    let fetcher = fetcher();
    let max_bytes = fetcher.settings().max_bytes;

    // Each byte arrives inside the read timeout; the total limit (2 s) ends it.
    let started = Instant::now();
    assert_eq!(fetcher.fetch(&url("/trickle"), "t").await, Err(FetchError::TimedOut));
    assert!(started.elapsed() < Duration::from_secs(4), "slow-loris took {:?}", started.elapsed());

    // Headers that never come: the read timeout (0.7 s) ends it.
    let started = Instant::now();
    assert_eq!(fetcher.fetch(&url("/silent"), "t").await, Err(FetchError::TimedOut));
    assert!(started.elapsed() < Duration::from_secs(2), "silence took {:?}", started.elapsed());

    let err = fetcher.fetch(&url("/endless"), "t").await.unwrap_err();
    assert_eq!(err, FetchError::TooLarge { max_bytes });
    assert_eq!(owner_text(&err), format!("the media could not be fetched: it is larger than {max_bytes} bytes"));
    assert_eq!(fetcher.fetch(&url("/declared-huge"), "t").await, Err(FetchError::TooLarge { max_bytes }));
    assert_eq!(fetcher.fetch(&url("/just-fits"), "t").await.unwrap().len() as u64, max_bytes);
    assert_eq!(fetcher.fetch(&url("/nothing-here"), "t").await, Err(FetchError::Status(404)));
}
