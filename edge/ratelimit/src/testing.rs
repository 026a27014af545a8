//! Real `redis-server` processes for tests, here and in the crates that use this service
//! (the origin's shared limits, the filter's global mode): one server, or a three-node Redis
//! Cluster, on free loopback ports, with no persistence, killed when dropped. A missing
//! `redis-server` fails the test with how to install it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-ratelimit-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A real `redis-server`, no persistence.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(free_port(), &[])
    }

    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let dir = scratch(&format!("redis-{port}"));
        let port_text = port.to_string();
        let mut args = vec!["--port", &port_text, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        let dir_text = dir.to_string_lossy().into_owned();
        args.extend(["--dir", &dir_text]);
        args.extend(extra);
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run `cargo xtask setup` (Debian package redis-server)");
        let redis = Self { port, child };
        redis.wait_ready();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on {} did not answer PING", self.port);
    }

    /// `redis-cli` against this server; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli is not installed: run `cargo xtask setup` (Debian package redis-tools)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three masters on loopback, slots spread by `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start() -> Self {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                let port = free_port();
                let config = scratch(&format!("cluster-{port}")).join("nodes.conf");
                let config = config.to_string_lossy().into_owned();
                // The bus port is the client port + 10000 unless set, which can pass 65535.
                let bus = free_port().to_string();
                let args = ["--cluster-enabled", "yes", "--cluster-config-file", &config, "--cluster-port", &bus];
                Redis::start_with(port, &args)
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(output.status.success(), "cluster create: {}", String::from_utf8_lossy(&output.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the cluster never reached cluster_state:ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    pub fn urls(&self) -> String {
        self.nodes.iter().map(Redis::url).collect::<Vec<_>>().join(",")
    }
}
