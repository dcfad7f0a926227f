//! The shipped three-server NATS cluster (`deploy/nats/cluster.conf`, which includes
//! `deploy/nats/nats-server.conf`) run as three real nats-servers, each given its name, the
//! route password and the three route URLs through the environment as compose and Kubernetes
//! give them: the servers form one JetStream cluster, the control plane's publisher (with
//! `nats.replicas: 3`, as both deploy files set it) creates the config stream and the snapshot
//! store with three copies and publishes a head through one server, a data-plane user reads
//! that head through another, and the route port refuses a peer that does not log in as
//! `route` with the password.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use controlplane::publish::{Built, Publisher};
use switchboard_shared::cluster::{NatsNames, SnapshotHead, nats_options};
use switchboard_shared::snapshot::Snapshot;
use switchboard_tests::jetstream::first_message;
use switchboard_tests::services::free_port;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const CONTROLPLANE_PASSWORD: &str = "cp-cluster-password";
const DATAPLANE_PASSWORD: &str = "dp0-cluster-password";
const ROUTE_PASSWORD: &str = "route-cluster-password";

/// Three nats-servers running the shipped cluster file; killed and cleaned up on drop.
struct ShippedCluster {
    client_ports: Vec<u16>,
    route_ports: Vec<u16>,
    dir: PathBuf,
    _children: Vec<Child>,
}

impl ShippedCluster {
    async fn start() -> Self {
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/cluster.conf");
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let dir = std::env::temp_dir().join(format!(
            "switchboard-nats-shipped-cluster-{}-{}",
            std::process::id(),
            client_ports[0]
        ));
        let mut children = Vec::new();
        for (i, (client, route)) in client_ports.iter().zip(&route_ports).enumerate() {
            std::fs::create_dir_all(dir.join(format!("n{i}"))).unwrap();
            let log = std::fs::File::create(dir.join(format!("n{i}.log"))).unwrap();
            let mut command = Command::new("nats-server");
            command
                .arg("-c")
                .arg(&conf)
                // Only the addresses differ from a deployment: loopback ports instead of 4222
                // and 6222 on separate hosts. (Not `--cluster`: that flag would replace the
                // file's route authorization.)
                .args(["-a", "127.0.0.1", "-p", &client.to_string(), "-sd"])
                .arg(dir.join(format!("n{i}")))
                .env(
                    "SWITCHBOARD_NATS_CLUSTER_LISTEN",
                    format!("127.0.0.1:{route}"),
                )
                .env("SWITCHBOARD_NATS_SERVER_NAME", format!("nats-{i}"))
                .env("SWITCHBOARD_NATS_ROUTE_PASSWORD", ROUTE_PASSWORD)
                .env(
                    "SWITCHBOARD_NATS_CONTROLPLANE_PASSWORD",
                    CONTROLPLANE_PASSWORD,
                )
                .env("SWITCHBOARD_NATS_DATAPLANE_0_PASSWORD", DATAPLANE_PASSWORD)
                .env(
                    "SWITCHBOARD_NATS_DATAPLANE_1_PASSWORD",
                    "dp1-cluster-password",
                )
                .env(
                    "SWITCHBOARD_NATS_DATAPLANE_2_PASSWORD",
                    "dp2-cluster-password",
                );
            for (j, peer) in route_ports.iter().enumerate() {
                command.env(
                    format!("SWITCHBOARD_NATS_ROUTE_{j}"),
                    format!("nats-route://route:{ROUTE_PASSWORD}@127.0.0.1:{peer}"),
                );
            }
            let child = command
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("nats-server must be installed");
            children.push(child);
        }
        Self {
            client_ports,
            route_ports,
            dir,
            _children: children,
        }
    }

    fn url_as(&self, server: usize, user: &str, password: &str) -> String {
        format!(
            "nats://{user}:{password}@127.0.0.1:{}",
            self.client_ports[server]
        )
    }

    fn logs(&self) -> String {
        (0..3)
            .map(|i| {
                std::fs::read_to_string(self.dir.join(format!("n{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

impl Drop for ShippedCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn connect(url: &str) -> async_nats::Client {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let options = nats_options(url, &Default::default()).await.unwrap();
        match options.connect(url).await {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot log in at {}: {e}", url.rsplit('@').next().unwrap()),
        }
    }
}

/// Publishes revision 1 as the control plane does, retrying while the cluster elects its
/// JetStream leaders.
async fn publish_head(cluster: &ShippedCluster, publisher: &Publisher) {
    let snapshot = Snapshot {
        revision: 1,
        ..Snapshot::from_json(b"{}").unwrap()
    };
    let built = Arc::new(Built::from_snapshot(&snapshot));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match publisher.publish(&built).await {
            Ok(_) => return,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("no JetStream cluster formed: {e:#}\n{}", cluster.logs()),
        }
    }
}

/// The head, read as `dataplane/src/cluster/nats.rs` reads it: an ordered consumer on the
/// head subject delivering the last message.
async fn read_head(client: async_nats::Client, names: &NatsNames) -> SnapshotHead {
    let js = async_nats::jetstream::new(client);
    let (stream, subject) = (&names.config_stream, &names.head_subject);
    let deliver = DeliverPolicy::LastPerSubject;
    let head = first_message(&js, stream, subject, deliver, Duration::from_secs(10))
        .await
        .unwrap();
    serde_json::from_slice(&head).unwrap()
}

#[tokio::test]
async fn the_shipped_cluster_config_forms_a_three_copy_jetstream_cluster() {
    let cluster = ShippedCluster::start().await;
    let names = NatsNames::new("switchboard").with_replicas(3);

    let cp = connect(&cluster.url_as(0, "controlplane", CONTROLPLANE_PASSWORD)).await;
    let publisher = Publisher::new(cp.clone(), names.clone());
    publish_head(&cluster, &publisher).await;

    let js = async_nats::jetstream::new(cp);
    let mut config = js.get_stream(&names.config_stream).await.unwrap();
    let info = config.info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3);
    let placement = info.cluster.expect("a clustered stream names its servers");
    let mut servers: Vec<String> = placement
        .replicas
        .iter()
        .map(|r| r.name.clone())
        .chain(placement.leader.clone())
        .collect();
    servers.sort();
    assert_eq!(
        servers,
        ["nats-0", "nats-1", "nats-2"],
        "one copy per server"
    );
    let store = js
        .get_stream(format!("OBJ_{}", names.snapshot_bucket))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .num_replicas;
    assert_eq!(store, 3, "the snapshot store keeps three copies");

    // A data plane logged in at another server reads the same head.
    let dp = connect(&cluster.url_as(2, "dataplane-0", DATAPLANE_PASSWORD)).await;
    assert_eq!(read_head(dp, &names).await.revision, 1);
}

#[tokio::test]
async fn the_route_port_refuses_a_peer_without_the_route_password() {
    let cluster = ShippedCluster::start().await;
    // Wait for the route port to listen.
    let addr = ("127.0.0.1", cluster.route_ports[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "route port closed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let logins = [
        (r#"{"user":"route","pass":"not-the-password","name":"intruder","cluster":"switchboard"}"#.to_owned(), false),
        (r#"{"name":"intruder","cluster":"switchboard"}"#.to_owned(), false),
        // The control: the password the servers share is let in.
        (format!(r#"{{"user":"route","pass":"{ROUTE_PASSWORD}","name":"peer","cluster":"switchboard"}}"#), true),
    ];
    for (login, admitted) in logins {
        let (read, mut write) = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap()
            .into_split();
        let mut lines = BufReader::new(read).lines();
        let info = lines.next_line().await.unwrap().unwrap();
        assert!(info.starts_with("INFO "), "{info}");
        write
            .write_all(format!("CONNECT {login}\r\nPING\r\n").as_bytes())
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .expect("an answer within 5 s")
            .unwrap()
            .unwrap_or_default();
        if admitted {
            assert_eq!(answer, "PONG", "route login with the route password");
        } else {
            assert!(
                answer.contains("Authorization Violation"),
                "route login {login} got {answer:?}"
            );
        }
    }
}
