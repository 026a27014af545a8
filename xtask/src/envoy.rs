//! The filter inside real Envoy: build and install the `.wasm`, validate `envoy.yaml`, run
//! Envoy on the fixed local ports and drive it over HTTP from `wasm-tests/envoy/test_envoy.py`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::stage::{cmd, exec, root, target_dir};
use crate::tools::state_dir;

/// Where `envoy.yaml` expects the filter, relative to Envoy's working directory.
pub const INSTALLED_FILTER: &str = ".portcullis/envoy/portcullis_envoy.wasm";

/// Builds the filter (`filter` profile), runs it through `wasm-opt` and installs the result
/// where `envoy.yaml` loads it from. Returns the optimised module: what the tests load and
/// what ships.
pub fn build_filter() -> Result<PathBuf> {
    exec(&mut cmd(
        "cargo",
        &["build", "--quiet", "-p", "portcullis-envoy", "--target", "wasm32-wasip1", "--profile", "filter"],
    ))?;
    let built = target_dir()?.join("wasm32-wasip1/filter/portcullis_envoy.wasm");
    let optimised = built.with_extension("opt.wasm");
    wasm_opt(&built, &optimised)?;
    let installed = root().join(INSTALLED_FILTER);
    std::fs::create_dir_all(installed.parent().context("installed path has a parent")?)?;
    std::fs::copy(&optimised, &installed)
        .with_context(|| format!("copying {} to {}", optimised.display(), installed.display()))?;
    let kib = |path: &Path| std::fs::metadata(path).map(|m| m.len() as f64 / 1024.0).unwrap_or(0.0);
    println!(
        "    filter: {} ({:.1} KiB; {:.1} KiB before wasm-opt)",
        optimised.display(),
        kib(&optimised),
        kib(&built)
    );
    Ok(optimised)
}

/// The Wasm features rustc emits for `wasm32-wasip1` (and V8 runs): `wasm-opt` must be told,
/// since the module carries no features section.
pub const WASM_FEATURES: [&str; 6] = [
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-multivalue",
    "--enable-reference-types",
];

/// Binaryen's `wasm-opt -O3` over `input`: ≈ 13 % smaller and slightly fewer instructions per
/// request than rustc's output alone (`-Oz` saves a little more space and costs instructions;
/// opt-level "s"/"z" in the profile cost 30–70 % more instructions: see the README).
pub fn wasm_opt(input: &Path, output: &Path) -> Result<()> {
    if Command::new("wasm-opt").arg("--version").output().is_err() {
        bail!("wasm-opt is not installed: `apt-get install -y binaryen` (cargo xtask setup does it when run as root)");
    }
    let mut command = Command::new("wasm-opt");
    command.arg("-O3").args(WASM_FEATURES).arg(input).arg("-o").arg(output);
    exec(&mut command)
}

/// The lines `[start, end)` of `envoy.yaml` that hold the filter's policy: the indented block
/// under `value: |` (Envoy takes a plugin's configuration only inline).
fn policy_block(lines: &[&str]) -> Result<(usize, usize, usize)> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let value =
        lines.iter().position(|l| l.trim() == "value: |").context("envoy.yaml has no `value: |` block (the policy)")?;
    let block_indent = indent(lines[value]) + 2;
    let end = lines[value + 1..]
        .iter()
        .position(|l| !l.trim().is_empty() && indent(l) < block_indent)
        .map_or(lines.len(), |n| value + 1 + n);
    Ok((value + 1, end, block_indent))
}

/// The policy `envoy.yaml` gives the filter.
pub fn envoy_yaml_policy() -> Result<serde_json::Value> {
    policy_in(&root().join("envoy.yaml"))
}

/// The policy an Envoy config (`envoy.yaml` or one written from it) gives the filter.
pub fn policy_in(config: &Path) -> Result<serde_json::Value> {
    let original = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let lines: Vec<&str> = original.lines().collect();
    let (start, end, _) = policy_block(&lines)?;
    serde_json::from_str(&lines[start..end].join("\n"))
        .with_context(|| format!("the policy in {} is not JSON", config.display()))
}

/// `envoy.yaml` with the filter's policy replaced by `policy` (a JSON document), written to
/// `.portcullis/envoy/envoy.yaml`.
pub fn config_with_policy(policy: &str) -> Result<PathBuf> {
    let parsed: serde_json::Value = serde_json::from_str(policy).context("the policy is not JSON")?;
    let original = std::fs::read_to_string(root().join("envoy.yaml"))?;
    let lines: Vec<&str> = original.lines().collect();
    let (start, end, indent) = policy_block(&lines)?;
    let mut out: Vec<String> = lines[..start].iter().map(|l| (*l).to_owned()).collect();
    out.extend(serde_json::to_string_pretty(&parsed)?.lines().map(|l| format!("{:indent$}{l}", "")));
    out.extend(lines[end..].iter().map(|l| (*l).to_owned()));
    let compiled = portcullis_core::Policy::from_json(policy.as_bytes())
        .map_err(|err| anyhow::anyhow!("the policy does not compile: {err}"))?;
    let path = root().join(".portcullis/envoy/envoy.yaml");
    std::fs::create_dir_all(path.parent().context("envoy dir")?)?;
    std::fs::write(&path, with_local_replies(&(out.join("\n") + "\n"), &compiled))?;
    Ok(path)
}

/// `local_reply_config` for `policy`, as lines indented by `indent`: over TLS (a CEL filter on
/// the connection) the core's HTTPS reply headers, else its HTTP ones, for every reply of 400 or
/// more. ADD_IF_ABSENT leaves the filter's own replies as the filter made them.
pub fn local_reply_config(policy: &portcullis_core::Policy, indent: usize) -> Vec<String> {
    let pad = " ".repeat(indent);
    let quote = |text: &str| serde_json::to_string(text).unwrap_or_default();
    let mut lines = vec![format!("{pad}local_reply_config:"), format!("{pad}  mappers:")];
    let status = "status_code_filter: { comparison: { op: GE, value: { default_value: 400, runtime_key: \
                  portcullis.local_reply_min_status } } }";
    for https in [true, false] {
        if https {
            lines.push(format!("{pad}    - filter:"));
            lines.push(format!("{pad}        and_filter:"));
            lines.push(format!("{pad}          filters:"));
            lines.push(format!("{pad}            - {status}"));
            lines.push(format!("{pad}            - extension_filter:"));
            lines.push(format!("{pad}                name: envoy.access_loggers.extension_filters.cel"));
            lines.push(format!("{pad}                typed_config:"));
            lines.push(format!(
                "{pad}                  \"@type\": type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
            ));
            lines.push(format!("{pad}                  expression: \"connection.tls_version != ''\""));
        } else {
            lines.push(format!("{pad}    - filter: {{ {status} }}"));
        }
        lines.push(format!("{pad}      headers_to_add:"));
        for (name, value) in policy.own_reply_headers(https) {
            lines.push(format!("{pad}        - header: {{ key: {}, value: {} }}", quote(&name), quote(&value)));
            lines.push(format!("{pad}          append_action: ADD_IF_ABSENT"));
        }
    }
    lines
}

/// `text` (an Envoy config) with every `local_reply_config:` block replaced by the one for
/// `policy`.
pub fn with_local_replies(text: &str, policy: &portcullis_core::Policy) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "local_reply_config:" {
            let own = indent(lines[i]);
            out.extend(local_reply_config(policy, own));
            i += 1;
            while i < lines.len() && (lines[i].trim().is_empty() || indent(lines[i]) > own) {
                i += 1;
            }
            // Keep the blank line that separated the block from what follows.
            if lines.get(i - 1).is_some_and(|l| l.trim().is_empty()) {
                out.push(String::new());
            }
        } else {
            out.push(lines[i].to_owned());
            i += 1;
        }
    }
    out.join("\n") + "\n"
}

/// The HTTPS listener for the Worker's hop (`cargo xtask up --worker`).
pub const WORKER_HOP_PORT: u16 = 8446;

/// `config` plus a listener on 127.0.0.1:[`WORKER_HOP_PORT`] for the Worker alone: the HTTPS
/// listener's copy whose policy trusts exactly one hop (`client_ip.trusted_hops: 1`), so each
/// client the Worker names in `X-Forwarded-For` keeps its own quota. The public listeners stay
/// as they are: a client connecting to :8443 itself cannot name another client. Both listeners
/// share one VM and its shared data, so a client's count is one whichever way it comes.
pub fn with_worker_hop(config: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let find = |what: &str| lines.iter().position(|l| l.trim() == what).with_context(|| format!("no `{what}` line"));
    // The connection manager (the anchor's block), and the TLS listener that refers to it.
    let anchor = find("typed_config: &http_connection_manager")?;
    let indent = |line: &str| line.len() - line.trim_start().len();
    let manager_end = lines[anchor + 1..]
        .iter()
        .position(|l| !l.trim().is_empty() && indent(l) <= indent(lines[anchor]))
        .map_or(lines.len(), |n| anchor + 1 + n);
    let listener = find("- name: tls")?;
    let listener_end = find("clusters:")?;

    let mut policy = policy_in(config)?;
    if let Some(object) = policy.as_object_mut() {
        let client_ip = object.entry("client_ip").or_insert_with(|| serde_json::json!({}));
        client_ip["trusted_hops"] = serde_json::json!(1);
    }
    let manager: Vec<String> = lines[anchor..manager_end]
        .iter()
        .map(|l| l.replace("typed_config: &http_connection_manager", "typed_config:"))
        .map(|l| l.replace("stat_prefix: portcullis", "stat_prefix: portcullis_worker_hop"))
        // The Worker's X-Forwarded-For arrives as the Worker wrote it (Envoy appending the
        // Worker's own address would make that the nearest hop, and every client one).
        .map(|l| {
            l.replace("use_remote_address: true", "use_remote_address: true\n                skip_xff_append: true")
        })
        .collect();
    let manager_refs: Vec<&str> = manager.iter().map(String::as_str).collect();
    let (start, end, block_indent) = policy_block(&manager_refs)?;
    let mut hop: Vec<String> = Vec::new();
    for line in &lines[listener..listener_end] {
        if line.trim() == "typed_config: *http_connection_manager" {
            hop.extend(manager[..start].iter().cloned());
            hop.extend(serde_json::to_string_pretty(&policy)?.lines().map(|l| format!("{:block_indent$}{l}", "")));
            hop.extend(manager[end..].iter().cloned());
        } else {
            hop.push(
                line.replace("- name: tls", "- name: worker-hop")
                    .replace("port_value: 8443", &format!("port_value: {WORKER_HOP_PORT}")),
            );
        }
    }
    let mut out: Vec<String> = lines[..listener_end].iter().map(|l| (*l).to_owned()).collect();
    // The hop listener goes last among the listeners, before `clusters:`.
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.push(String::new());
    out.extend(hop.into_iter().filter(|l| !l.trim().is_empty()));
    out.push(String::new());
    out.extend(lines[listener_end..].iter().map(|l| (*l).to_owned()));
    let path = state_dir().join("envoy/envoy-worker-hop.yaml");
    std::fs::create_dir_all(path.parent().context("envoy dir")?)?;
    std::fs::write(&path, out.join("\n") + "\n")?;
    Ok(path)
}

/// `envoy --mode validate`: parses the file and runs the plugin's `on_configure`.
pub fn validate(envoy: &Path, config: &Path) -> Result<()> {
    exec(
        Command::new(envoy)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(config)
            .current_dir(root())
            .stdout(Stdio::null()),
    )
}

/// The fixed local ports (the README lists them) a test or stack run needs free.
pub const PORTS: [(u16, &str); 4] =
    [(8080, "Envoy HTTP"), (8443, "Envoy HTTPS"), (9901, "Envoy admin"), (9443, "origin")];

pub fn ensure_ports_free(ports: &[(u16, &str)]) -> Result<()> {
    for (port, what) in ports {
        if TcpListener::bind(("127.0.0.1", *port)).is_err() {
            bail!(
                "127.0.0.1:{port} ({what}) is in use — is `cargo xtask up` (or another test run) running? \
                 Stop it and try again"
            );
        }
    }
    Ok(())
}

/// A process that is killed when dropped, with its log kept for failure reports.
pub struct Daemon {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, command: &mut Command) -> Result<Self> {
        let logs = state_dir().join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name: name.to_owned(), child, log })
    }

    /// The last lines of the log, for error messages.
    pub fn tail(&self, lines: usize) -> String {
        crate::tools::tail_file(&self.log, lines)
    }

    /// Waits until `probe` succeeds, failing with the log tail if the process exits or time runs out.
    pub fn wait_until(&mut self, timeout: Duration, mut probe: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}; its log ({}):\n{}", self.name, self.log.display(), self.tail(30));
            }
            if probe() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} not ready after {timeout:?}; its log ({}):\n{}", self.name, self.log.display(), self.tail(30))
    }
}

impl Drop for Daemon {
    /// SIGTERM first (Envoy and the origin shut down gracefully on it), SIGKILL after 5 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Spawns Envoy with `config` from the project root (its own `--base-id`, no hot restart).
pub fn spawn_envoy(
    envoy: &Path,
    config: &Path,
    name: &str,
    base_id: u32,
    concurrency: u32,
    log_level: &str,
) -> Result<Daemon> {
    Daemon::spawn(
        name,
        Command::new(envoy)
            .args(["--disable-hot-restart", "--concurrency", &concurrency.to_string(), "--log-level", log_level])
            .args(["--base-id", &base_id.to_string(), "-c"])
            .arg(config)
            .current_dir(root()),
    )
}

/// Starts Envoy with `config` on two workers and waits for its admin (:9901) to be ready.
pub fn start_envoy(envoy: &Path, config: &Path, name: &str, base_id: u32) -> Result<Daemon> {
    let mut daemon = spawn_envoy(envoy, config, name, base_id, 2, "warn")?;
    daemon.wait_until(Duration::from_secs(20), || admin_ready(9901))?;
    Ok(daemon)
}

/// Envoy's admin `/ready` answers `LIVE`.
pub fn admin_ready(port: u16) -> bool {
    local_http_get(port, "/ready")
        .is_some_and(|response| response.starts_with("HTTP/1.1 200") && response.contains("LIVE"))
}

/// `GET path` over plain HTTP/1.1 to 127.0.0.1:`port`: the whole response, or `None` when
/// nothing answers.
pub fn local_http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    (!response.is_empty()).then_some(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// envoy.yaml's `local_reply_config` is generated from its policy; this fails when the two
    /// drift apart, and prints the block that belongs there.
    #[test]
    fn envoy_yaml_local_replies_carry_the_policys_headers() {
        let path = root().join("envoy.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let policy = portcullis_core::Policy::from_json(policy_in(&path).unwrap().to_string().as_bytes()).unwrap();
        let expected = with_local_replies(&text, &policy);
        if text != expected {
            let start = expected.find("local_reply_config:").unwrap_or(0);
            panic!(
                "envoy.yaml's local_reply_config differs from its policy's headers; the block belongs there as:\n{}",
                &expected[start..expected[start..].find("\n\n").map_or(expected.len(), |n| start + n)]
            );
        }
        let https = policy.own_reply_headers(true);
        let http = policy.own_reply_headers(false);
        assert!(https.iter().any(|(n, _)| n == "strict-transport-security"), "{https:?}");
        assert!(!http.iter().any(|(n, _)| n == "strict-transport-security"), "HSTS only over TLS: {http:?}");
        assert_eq!(https.len(), http.len() + 1);
    }
}
