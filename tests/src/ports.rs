//! Free loopback ports for servers a test starts.

use std::net::TcpListener;

/// A TCP port on 127.0.0.1 that was free a moment ago: bound with port 0 and
/// released, so the OS picked it. Another process could take it in between;
/// on loopback in a test run that is rare enough.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}
