//! The harness itself: the nats-server it starts is real, keeps its store
//! across a restart on the same port, and the runner binary builds.

use std::time::Duration;

use async_nats::jetstream::stream;
use jetrun_e2e::{jetrun_bin, stream_len, NatsServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_restarts_on_the_same_port_with_its_store() {
    let mut server = NatsServer::start();
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&server.url()).await);
    js.create_stream(stream::Config {
        name: "KEEP".to_string(),
        subjects: vec!["keep.>".to_string()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    js.publish("keep.one", "1".into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    let port = server.port();
    server.restart();

    assert_eq!(server.port(), port);
    assert!(server.store_dir().is_dir());
    let js = async_nats::jetstream::new(jetrun_e2e::connect(&server.url()).await);
    jetrun_e2e::wait_until(Duration::from_secs(10), "the stream is back", || {
        let js = js.clone();
        async move { stream_len(&js, "KEEP").await == 1 }
    })
    .await;
}

#[test]
fn jetrun_binary_is_built() {
    let bin = jetrun_bin();
    assert!(bin.is_file(), "{} is not a file", bin.display());
}
