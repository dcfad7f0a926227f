//! Throwaway Redis and NATS servers for outage tests: each test that kills and restarts a
//! server starts its own from the installed binary (never touching the shared ones), on a free
//! port it keeps across restarts, and the process dies with the value.
#![allow(clippy::expect_used)] // Test support reports a broken set-up by panicking.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts connections on `port`.
async fn until_listening(port: u16, what: &str) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `nats-server -js` of the test's own, whose store survives restarts.
pub struct ThrowawayNats {
    pub port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl ThrowawayNats {
    pub async fn start() -> Self {
        let port = free_port();
        let store = std::env::temp_dir().join(format!(
            "switchboard-nats-{}-{port}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut nats = Self {
            port,
            store,
            child: None,
        };
        nats.restart().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port and store (after [`Self::stop`]).
    pub async fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server must be installed for the outage tests");
        self.child = Some(child);
        until_listening(self.port, "nats-server").await;
    }

    /// Kills it (an outage, not a clean shutdown).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for ThrowawayNats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A `redis-server` of the test's own, keeping nothing on disk.
pub struct ThrowawayRedis {
    pub port: u16,
    child: Option<Child>,
}

impl ThrowawayRedis {
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` (e.g. the port of one that was stopped: a Redis restart).
    pub async fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed for the outage tests");
        until_listening(port, "redis-server").await;
        Self {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (an outage).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// The shared NATS the tests use: `$NATS_URL`, else the standard local port.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The shared Redis the tests use: `$REDIS_URL`, else the standard local port.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A Redis Cluster of the test's own: three masters, each with one replica, from
/// `redis-server --cluster-enabled yes` processes on free ports, joined by
/// `redis-cli --cluster create`. Node timeout 1 s, so a killed master's replica takes over
/// within a few seconds. Everything dies (and its directory goes) with the value.
pub struct ThrowawayRedisCluster {
    /// Node ports: the first three start as masters.
    pub ports: Vec<u16>,
    children: Vec<(u16, Child)>,
    dir: PathBuf,
}

impl ThrowawayRedisCluster {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-redis-cluster-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let mut children = Vec::new();
        for port in &ports {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
                // A replica fails over even if it never finished its first sync (it was
                // created a moment ago); the default refuses after ~10 node timeouts apart.
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server must be installed for the cluster tests");
            children.push((*port, child));
        }
        for port in &ports {
            until_listening(*port, "redis-server (cluster node)").await;
        }
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("redis-cli must be installed for the cluster tests");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = Self {
            ports,
            children,
            dir,
        };
        for port in cluster.ports.clone() {
            cluster.until_ok(port).await;
        }
        cluster
    }

    /// The seed URL list the planes take (`redis://a,redis://b,…`): the three first nodes.
    pub fn url(&self) -> String {
        self.ports[..3]
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until the node on `port` reports `cluster_state:ok`.
    pub async fn until_ok(&self, port: u16) {
        let started = Instant::now();
        loop {
            let info = cli(port, &["CLUSTER", "INFO"]).await;
            if info.contains("cluster_state:ok") {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the cluster never became ok: {info}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port of the master serving `key` now, as the node on `ask` sees it.
    pub async fn master_of(&self, ask: u16, key: &str) -> u16 {
        let slot: u16 = cli(ask, &["CLUSTER", "KEYSLOT", key])
            .await
            .trim()
            .parse()
            .expect("a slot");
        let nodes = cli(ask, &["CLUSTER", "NODES"]).await;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // A failed master still owns its slots until its replica is promoted.
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
            });
            if owns {
                let addr = fields[1].split('@').next().unwrap_or_default();
                return addr
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("a node port");
            }
        }
        panic!("no master serves slot {slot}: {nodes}");
    }

    /// Kills the node on `port` (a crash, not a clean shutdown).
    pub async fn kill(&mut self, port: u16) {
        if let Some(i) = self.children.iter().position(|(p, _)| *p == port) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill().await;
        }
    }
}

impl Drop for ThrowawayRedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p PORT ARGS…`'s output ("" when it fails).
async fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
