//! The harness for jetrun's end-to-end tests: it starts a real `nats-server`
//! on a free loopback port, builds and runs the real `jetrun` binary against
//! it, and reads back what a user would see: ledgers written by test
//! functions, messages in streams, consumer state and `/metrics`.
//!
//! Every test gets its own server, temp directory and ports, so tests run in
//! parallel. Waits are for conditions with a deadline ([`wait_until`]), never
//! bare sleeps; a process started here is killed on drop, and the runner's
//! log is printed when the test panics.

mod clock;
mod cluster;
mod config;
pub mod faults;
mod http_server;
mod jetstream;
mod jwt;
mod ledger;
mod metrics;
mod nats_server;
mod ports;
mod prometheus;
mod repo;
mod runner;
mod scripts;
mod testbed;
mod wait;

pub use clock::{parse_rfc3339, unix_now};
pub use cluster::NatsCluster;
pub use config::{line_of, toml_str, write_config, IDLE_SAGA};
pub use http_server::{HttpServer, Reply, Request};
pub use jetstream::{
    connect, consumer_info, header, publish_bare, publish_bare_burst, publish_raw_block,
    publish_raw_headers, publish_with_headers, stream_len, stream_messages, wait_acked,
    wait_for_bucket, wait_for_consumer,
};
pub use jwt::JwtAuth;
pub use ledger::{Entry, Ledger};
pub use metrics::{http_status, metric, scrape, wait_ready};
pub use nats_server::{nats_server_bin, NatsServer};
pub use ports::free_port;
pub use prometheus::{scrape_config_for, tool_or_skip, Prometheus, INSTALL_PROMETHEUS};
pub use repo::repo_root;
pub use runner::{
    jetrun_bin, run_check, run_command, run_command_in, run_command_with_env,
    without_outside_settings, Runner,
};
pub use scripts::{record_then, LEDGER_LINE, WORKER_PY};
pub use testbed::TestBed;
pub use wait::{holds_for, wait_until};
