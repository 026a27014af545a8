//! Responses: the core's local replies, the origin's response with the core's edits, and the
//! Worker's own 502 and 500, which carry the same security headers.

use portcullis_core::{LocalResponse, Policy, ResponsePlan};
use worker::wasm_bindgen::JsValue;
use worker::{
    Fetch, Fetcher, Headers, Request, RequestInit, RequestRedirect, Response, ResponseBody, Result, console_error,
};

use crate::incoming::Incoming;
use crate::settings::OriginUrl;

/// Hop-by-hop headers (RFC 9110 §7.6.1) and `host`, which the fetch sets from the origin URL.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Sends the core's local reply as is: its security headers are already included.
pub fn local(reply: &LocalResponse) -> Result<Response> {
    let headers = Headers::new();
    for (name, value) in &reply.headers {
        headers.append(name, value)?;
    }
    let builder = Response::builder().with_status(reply.status).with_headers(headers);
    Ok(if reply.body.is_empty() { builder.empty() } else { builder.fixed(reply.body.clone().into_bytes()) })
}

/// A JSON reply of the Worker's own, with the edits of `plan` applied like any other response.
pub fn json_error(
    policy: Option<&Policy>,
    plan: Option<ResponsePlan>,
    status: u16,
    error: &str,
    message: &str,
) -> Result<Response> {
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("cache-control".to_owned(), "no-store".to_owned()),
    ];
    if let (Some(policy), Some(plan)) = (policy, plan) {
        policy.response_edits(&plan).apply(&mut headers);
    }
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    let out = Headers::new();
    for (name, value) in &headers {
        out.append(name, value)?;
    }
    Ok(Response::builder().with_status(status).with_headers(out).fixed(body.into_bytes()))
}

/// The origin URL for `incoming`: the configured origin (and its path prefix) + the target.
pub fn upstream_url(origin: &OriginUrl, incoming: &Incoming) -> String {
    format!("{origin}{}", incoming.target)
}

/// Forwards the request (method, headers minus hop-by-hop, streamed body) to the origin and
/// returns its response with the core's edits applied, or a 502 when it cannot be reached.
pub async fn forward(
    req: &Request,
    incoming: &Incoming,
    origin: &OriginUrl,
    mtls: Option<&Fetcher>,
    policy: &Policy,
    plan: ResponsePlan,
) -> Result<Response> {
    let upstream = match send_upstream(req, incoming, origin, mtls).await {
        Ok(response) => response,
        Err(err) => {
            console_error!("portcullis: origin {origin} unreachable: {err}");
            return json_error(Some(policy), Some(plan), 502, "bad_gateway", "The origin could not be reached.");
        }
    };
    edit(upstream, policy, plan)
}

/// Forwarding headers a client may send that only the edge may write: they are dropped from
/// the origin request, and the Worker writes its own `X-Forwarded-For`/`-Proto`.
const EDGE_WRITTEN: [&str; 4] = ["x-forwarded-for", "x-forwarded-proto", "forwarded", "x-real-ip"];

/// The headers the origin gets: the client's, minus hop-by-hop ones (and those `Connection`
/// lists), minus every forwarding and `CF-*` header the client sent, plus the Worker's own
/// `X-Forwarded-For` (the client's address, as Cloudflare vouches for it in
/// `CF-Connecting-IP`; absent when it is not an address) and `X-Forwarded-Proto`.
pub fn upstream_headers(incoming: &Incoming) -> Vec<(String, String)> {
    let connection_listed: Vec<String> = incoming
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| value.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    let client = incoming
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("cf-connecting-ip"))
        .and_then(|(_, value)| value.trim().parse::<std::net::IpAddr>().ok());
    let mut headers: Vec<(String, String)> = incoming
        .headers
        .iter()
        .filter(|(name, _)| {
            let lower = name.to_ascii_lowercase();
            !(HOP_BY_HOP.contains(&lower.as_str())
                || connection_listed.contains(&lower)
                || EDGE_WRITTEN.contains(&lower.as_str())
                || lower.starts_with("cf-"))
        })
        .cloned()
        .collect();
    if let Some(client) = client {
        headers.push(("x-forwarded-for".into(), client.to_string()));
    }
    headers.push(("x-forwarded-proto".into(), if incoming.https { "https" } else { "http" }.into()));
    headers
}

/// Sends the origin request: through `mtls` (the `mtls_certificates` binding, which presents the
/// Worker's client certificate to an origin that requires one), else a plain fetch.
async fn send_upstream(
    req: &Request,
    incoming: &Incoming,
    origin: &OriginUrl,
    mtls: Option<&Fetcher>,
) -> Result<Response> {
    let headers = Headers::new();
    for (name, value) in upstream_headers(incoming) {
        headers.append(&name, &value)?;
    }
    let mut init = RequestInit::new();
    init.with_method(worker::Method::from(incoming.method.clone()))
        .with_headers(headers)
        // The client follows the origin's redirects itself, and sees them with our headers.
        .with_redirect(RequestRedirect::Manual);
    let bodiless = incoming.method.eq_ignore_ascii_case("GET") || incoming.method.eq_ignore_ascii_case("HEAD");
    if !bodiless && let Some(body) = req.inner().body() {
        init.with_body(Some(JsValue::from(body)));
    }
    let outbound = Request::new_with_init(&upstream_url(origin, incoming), &init)?;
    match mtls {
        Some(fetcher) => fetcher.fetch_request(outbound).await,
        None => Fetch::Request(outbound).send().await,
    }
}

/// Copies the origin's response with the edits applied (fetched headers are immutable).
fn edit(upstream: Response, policy: &Policy, plan: ResponsePlan) -> Result<Response> {
    let status = upstream.status_code();
    let received: Vec<(String, String)> = upstream.headers().entries().collect();
    let edits = policy.response_edits(&plan);
    let headers = Headers::new();
    for (name, value) in edits.rewrite(&received) {
        headers.append(name, &String::from_utf8_lossy(value))?;
    }
    let (_, body) = upstream.into_parts();
    let builder = Response::builder().with_status(status).with_headers(headers);
    Ok(match body {
        ResponseBody::Empty => builder.empty(),
        body => builder.body(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(headers: &[(&str, &str)]) -> Incoming {
        Incoming {
            method: "GET".into(),
            https: true,
            authority: Some("localhost".into()),
            target: "/".into(),
            headers: headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
        }
    }

    #[test]
    fn the_origin_hears_the_edge_about_the_client_never_the_client_about_itself() {
        let sent = upstream_headers(&incoming(&[
            ("cf-connecting-ip", "198.51.100.7"),
            ("cf-ray", "abc"),
            ("CF-IPCountry", "XX"),
            ("x-forwarded-for", "10.0.0.1"),
            ("X-Forwarded-Proto", "http"),
            ("forwarded", "for=10.0.0.1"),
            ("x-real-ip", "10.0.0.1"),
            ("connection", "x-secret"),
            ("x-secret", "hop"),
            ("te", "trailers"),
            ("accept", "application/json"),
        ]));
        assert_eq!(
            sent,
            [
                ("accept".to_owned(), "application/json".to_owned()),
                ("x-forwarded-for".to_owned(), "198.51.100.7".to_owned()),
                ("x-forwarded-proto".to_owned(), "https".to_owned()),
            ]
        );
        let garbage = upstream_headers(&incoming(&[("cf-connecting-ip", "not an address")]));
        assert_eq!(garbage, [("x-forwarded-proto".to_owned(), "https".to_owned())]);
    }
}
