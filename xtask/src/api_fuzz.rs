//! API fuzzing: schemathesis, every check, against the origin's `/openapi.json` through Envoy
//! with a valid token, on a stack started by `cargo xtask up`.
//!
//! The stack runs envoy.yaml's policy with `rate_limit_mode: shadow`: every tier is still
//! evaluated and reported (and the headers applied), but nothing is refused, so a run of
//! thousands of requests tests the API rather than the login tier's 5/minute. It also runs the
//! `strict` header preset, whose answers are then scored by the MDN Observatory's rules (A+).
//!
//! `origin/api-fuzz/schemathesis-baseline.json` lists the failures accepted on purpose; any
//! other failure fails the run. It holds one: schemathesis expects 405 for an undeclared `QUERY`
//! without a body, while Envoy answers such a request 400 before any filter runs
//! (`query_missing_content_type`), as RFC 10008 §2 requires of a server. `QUERY` with a content
//! type, and every other undeclared method, reach the origin and get its 405.

use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::e2e::Stack;
use crate::stage::root;
use crate::tools::{state_dir, venv};

/// Test cases per operation and phase; the whole run takes about a minute here.
const MAX_EXAMPLES: &str = "100";

pub fn run() -> Result<()> {
    let mut policy = crate::envoy::envoy_yaml_policy()?;
    policy["rate_limit_mode"] = "shadow".into();
    policy["preset"] = "strict".into();
    let dir = state_dir().join("api-fuzz");
    std::fs::create_dir_all(&dir)?;
    let policy_file = dir.join("policy.json");
    std::fs::write(&policy_file, serde_json::to_string_pretty(&policy)?)?;

    let mut stack = Stack::start(&["--policy", &policy_file.to_string_lossy()])?;
    let token = stack.demo_token()?;
    let out = Command::new(venv().join("bin/schemathesis"))
        .args(["run", "https://localhost:8443/openapi.json", "--checks", "all", "--workers", "2"])
        .args(["--max-examples", MAX_EXAMPLES, "--request-timeout", "10"])
        .arg("--header")
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--tls-verify")
        .arg(crate::certs::dir().join("ca.crt"))
        .arg("--baseline")
        .arg(root().join("origin/api-fuzz/schemathesis-baseline.json"))
        .args(["--report", "junit", "--report-dir"])
        .arg(&dir)
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .output()
        .context("running schemathesis (cargo xtask setup installs it)")?;
    let undeclared = undeclared_methods_get_405(&token);
    let observatory = crate::observatory::strict_earns_a_plus();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report.lines().skip_while(|l| !l.contains("SUMMARY")).collect::<Vec<_>>().join("\n");
    stack.interrupt()?;
    ensure!(
        out.status.success(),
        "schemathesis found failures (reproduce with the curl lines; report in {}):\n{report}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{summary}");
    undeclared?;
    println!("    strict preset, MDN Observatory rules: {}", observatory?);
    Ok(())
}

/// What the baseline's entries stand for, checked here so they hide nothing else: on the GET
/// operations, undeclared methods — `QUERY` with a content type among them — get 405.
fn undeclared_methods_get_405(token: &str) -> Result<()> {
    let auth = format!("Authorization: Bearer {token}");
    for path in ["/api/v1/health", "/api/v1/videos", "/api/v1/jobs/00000000-0000-4000-8000-000000000000"] {
        for method in ["PUT", "PATCH", "POST", "QUERY", "TRACE"] {
            let url = format!("https://localhost:8443{path}");
            let out = crate::up::curl(&["--http1.1", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
                .args(["-H", &auth, "-H", "content-type: application/json", "-d", "{}", &url])
                .output()?;
            let status = String::from_utf8_lossy(&out.stdout);
            ensure!(status == "405", "{method} {path} answered {status}, not 405");
        }
    }
    Ok(())
}
