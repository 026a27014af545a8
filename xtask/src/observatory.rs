//! The MDN HTTP Observatory's rules (`portcullis_core::observatory`) applied to a running
//! stack's answers through Envoy, and the seed preset's exact values checked on them.

use anyhow::{Context, Result, ensure};
use portcullis_core::observatory::scan;

/// The headers of an HTTPS answer from Envoy (names lower-cased).
fn https_headers(path: &str) -> Result<Vec<(String, String)>> {
    let out = crate::up::curl(&["--http1.1", "-D", "-", "-o", "/dev/null", &format!("https://localhost:8443{path}")])
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.starts_with("HTTP/"), "no answer from https://localhost:8443{path}: {text}");
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect())
}

/// Status and `Location` of a plain-HTTP request to Envoy.
fn plain_http_answer(path: &str) -> Result<(u16, Option<String>)> {
    let out = crate::up::curl(&["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"])
        .arg(format!("http://localhost:8080{path}"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, location) = text.split_once(' ').unwrap_or((&text, ""));
    let status = status.parse().with_context(|| format!("curl said {text:?}"))?;
    Ok((status, Some(location.to_owned()).filter(|l| !l.is_empty())))
}

/// The stack runs the `strict` preset: every answer scores A+ with no penalty.
pub fn strict_earns_a_plus() -> Result<String> {
    let redirect = plain_http_answer("/api/v1/health")?;
    let mut scores = Vec::new();
    for path in ["/api/v1/health", "/api/v1/videos", "/no/such/page"] {
        let headers = https_headers(path)?;
        let result = scan(&headers, (redirect.0, redirect.1.as_deref()), "localhost");
        let penalties: Vec<_> = result.results.iter().filter(|(_, m)| *m < 0).collect();
        ensure!(
            penalties.is_empty() && result.grade() == "A+",
            "{path}: grade {} (score {}), penalties {penalties:?}; headers {headers:?}",
            result.grade(),
            result.score()
        );
        scores.push(result.score().to_string());
    }
    Ok(format!("A+ ({}) on 200, 401 and 404 answers, redirect {} to {:?}", scores.join(", "), redirect.0, redirect.1))
}

/// The stack runs the `seed` preset: the seed's exact values on every answer.
pub fn seed_values_present() -> Result<()> {
    for path in ["/api/v1/health", "/api/v1/videos", "/no/such/page"] {
        let headers = https_headers(path)?;
        for (name, value) in portcullis_core::SEED_HEADERS {
            let got: Vec<&str> = headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect();
            ensure!(got == [*value], "{path}: {name} is {got:?}, the seed's is {value:?}");
        }
    }
    Ok(())
}
