//! A 3-node NATS cluster with JetStream for one test: each node a real
//! `nats-server` with its own client port, cluster port and store directory,
//! routed to the other two, all on loopback. Nodes can be killed (`kill -9`)
//! and restarted on the same ports and store, and the harness can say which
//! node leads a stream or a consumer.

use std::time::Duration;

use async_nats::jetstream::Context;

use crate::nats_server::NatsServer;
use crate::ports::free_port;
use crate::wait::wait_until;

/// Asks `leader` until it names a server (an election can take seconds).
async fn leader_of<F, Fut>(what: &str, mut leader: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(name) = leader().await {
            return name;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} has no leader after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running cluster; every node is killed on drop.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    names: Vec<String>,
}

impl NatsCluster {
    /// Starts `size` routed nodes (`n1`, `n2`, ...) and waits until
    /// JetStream has a meta leader, so streams can be created.
    pub async fn start(size: usize) -> Self {
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let names: Vec<String> = (1..=size).map(|i| format!("n{i}")).collect();
        let nodes = (0..size)
            .map(|i| {
                let routes: Vec<String> = cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, port)| format!("\"nats-route://127.0.0.1:{port}\""))
                    .collect();
                NatsServer::start_with_config(&format!(
                    r#"server_name: {name}
cluster {{
  name: jetrun-test
  listen: "127.0.0.1:{port}"
  routes: [{routes}]
}}
"#,
                    name = names[i],
                    port = cluster_ports[i],
                    routes = routes.join(", "),
                ))
            })
            .collect();
        let cluster = NatsCluster { nodes, names };
        cluster.wait_for_meta_leader().await;
        cluster
    }

    /// Every node's client URL, comma-separated: what `[nats] url` takes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    pub fn node(&self, index: usize) -> &NatsServer {
        &self.nodes[index]
    }

    /// The index of the node whose `server_name` is `name`.
    pub fn index_of(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no node named {name:?} in {:?}", self.names))
    }

    /// `kill -9` of node `index` (its store stays).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts a killed node again on its ports and store.
    pub fn restart(&mut self, index: usize) {
        self.nodes[index].restart();
    }

    /// A JetStream context connected to every node (the client fails over).
    pub async fn jetstream(&self) -> Context {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(self.urls())
            .await
            .expect("connect to the cluster");
        async_nats::jetstream::new(client)
    }

    /// The server name of `stream`'s leader, once it has one.
    pub async fn stream_leader(&self, js: &Context, stream: &str) -> String {
        leader_of(&format!("stream {stream}"), || async move {
            let mut handle = js.get_stream(stream).await.ok()?;
            handle.info().await.ok()?.cluster.clone()?.leader
        })
        .await
    }

    /// The server name of the leader of `stream`'s consumer `consumer`.
    pub async fn consumer_leader(&self, js: &Context, stream: &str, consumer: &str) -> String {
        leader_of(&format!("consumer {consumer}"), || async move {
            crate::jetstream::consumer_info(js, stream, consumer)
                .await?
                .cluster?
                .leader
        })
        .await
    }

    async fn wait_for_meta_leader(&self) {
        let js = &self.jetstream().await;
        wait_until(
            Duration::from_secs(30),
            "the JetStream cluster has a meta leader",
            || async move { js.query_account().await.is_ok() },
        )
        .await;
    }
}
