//! Free loopback ports for servers a test starts.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Ports handed out in this process: tests in one binary run side by side,
/// and the OS may offer a port again once its listener is closed.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago: bound with port 0 and
/// released, so the OS picked it, and never handed out before in this
/// process. Another process could take it in between; on loopback in a test
/// run that is rare enough (and a nats-server is only taken as ready once
/// its own log says so).
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}
