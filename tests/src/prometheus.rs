//! A real Prometheus for one test (Debian's `prometheus` package): the
//! repository's scrape config pointed at the test's runner, a temp TSDB, a
//! free port, killed on drop; and its HTTP API read as JSON. Where the
//! package is missing, [`tool_or_skip`] says so on stderr and the test
//! returns: a skip is printed, never a silent pass.

use std::fs::File;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ports::free_port;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The target `deploy/prometheus/prometheus.yml` scrapes: jetrun's default
/// `[metrics] listen`.
const REPO_TARGET: &str = "127.0.0.1:9600";

/// How to get Prometheus and promtool, for [`tool_or_skip`].
pub const INSTALL_PROMETHEUS: &str = "install Debian's prometheus package \
     (apt-get install --no-install-recommends prometheus; .ci/run does)";

/// The program `name` (`prometheus`, `promtool`, `systemd-analyze`): env
/// `env_var` when set, else the first on `PATH`. When there is none, prints
/// `SKIPPED: <test>: ...` with `install` (how to get it) to the real stderr,
/// past the test harness's capture so a passing run still shows it, and
/// returns `None`.
pub fn tool_or_skip(name: &str, env_var: &str, test: &str, install: &str) -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os(env_var).filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "{env_var}={} is not a file", bin.display());
        return Some(bin);
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        let _ = writeln!(
            io::stderr(),
            "SKIPPED: {test}: `{name}` not found on PATH (nor {env_var}); {install} to run it."
        );
    }
    found
}

/// `deploy/prometheus/prometheus.yml` (text `original`, from `config_dir`)
/// made to scrape `target` every second: the `jetrun` job's one target
/// replaced, scrape and evaluation intervals of 1s, and `rule_files` made
/// absolute so the copy still loads the repository's alert rules.
///
/// # Panics
/// When the file no longer has the shape this expects (a `jetrun` job with
/// one static target, `127.0.0.1:9600`), so a change to it is noticed here.
pub fn scrape_config_for(original: &str, config_dir: &Path, target: SocketAddr) -> String {
    let mut doc: Yaml = serde_yaml_ng::from_str(original).expect("prometheus.yml is YAML");
    doc["global"]["scrape_interval"] = "1s".into();
    doc["global"]["evaluation_interval"] = "1s".into();
    if let Some(files) = doc.get_mut("rule_files").and_then(Yaml::as_sequence_mut) {
        for file in files {
            let name = file.as_str().expect("rule_files holds file names");
            *file = config_dir.join(name).to_string_lossy().into_owned().into();
        }
    }
    let jobs = doc["scrape_configs"]
        .as_sequence_mut()
        .expect("prometheus.yml has a scrape_configs list");
    let job = jobs
        .iter_mut()
        .find(|job| job["job_name"].as_str() == Some("jetrun"))
        .expect("prometheus.yml has a scrape config with job_name: jetrun");
    job["scrape_interval"] = "1s".into();
    let statics = job["static_configs"]
        .as_sequence_mut()
        .expect("the jetrun job has static_configs");
    assert_eq!(
        statics.len(),
        1,
        "the jetrun job should have one static_configs entry"
    );
    let targets = statics[0]["targets"]
        .as_sequence_mut()
        .expect("the jetrun job's static_configs has targets");
    assert_eq!(
        *targets,
        [Yaml::from(REPO_TARGET)],
        "the jetrun job should scrape {REPO_TARGET}, jetrun's default [metrics] listen"
    );
    *targets = vec![target.to_string().into()];
    serde_yaml_ng::to_string(&doc).expect("YAML serializes")
}

/// A running Prometheus owned by one test.
pub struct Prometheus {
    child: Option<Child>,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Starts `bin` with `config` (YAML text), a temp TSDB and a free port,
    /// and waits until `/-/ready` answers 200.
    pub async fn start(bin: &Path, config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetrun-prometheus-")
            .tempdir()
            .expect("create temp dir for Prometheus");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = File::create(dir.path().join("prometheus.log")).expect("create Prometheus log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut prometheus = Prometheus {
            child: Some(child),
            addr,
            dir,
        };
        prometheus.wait_ready().await;
        prometheus
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "Prometheus exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok((200, _)) = get(self.addr, "/-/ready").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus was not ready within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/<endpoint>`: the `data` of a successful answer.
    ///
    /// # Panics
    /// When Prometheus answers with an error, naming it.
    pub async fn api(&self, endpoint: &str) -> Json {
        let path = format!("/api/v1/{endpoint}");
        let (status, body) = get(self.addr, &path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} from Prometheus failed: {e}"));
        let answer: Json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path} answered {status} with no JSON ({e}): {body}"));
        assert!(
            status == 200 && answer["status"] == "success",
            "GET {path} answered {status}: {body}"
        );
        answer["data"].clone()
    }

    /// An instant query: the `result` list (`{"metric": {...}, "value": [t, "v"]}`).
    pub async fn query(&self, promql: &str) -> Vec<Json> {
        let data = self
            .api(&format!("query?query={}", url_encode(promql)))
            .await;
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("query {promql:?} gave no result list: {data}"))
            .clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "---- Prometheus log ({}, last {} lines) ----\n{}",
                self.addr,
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// One HTTP/1.0 `GET` (so the answer is never chunked): status and body.
async fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, io::Error>(response)
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status line"))?;
    Ok((status, body.to_string()))
}

/// `text` percent-encoded for a URL query value.
fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
global:
  scrape_interval: 15s
rule_files:
  - alerts.yml
scrape_configs:
  - job_name: other
    static_configs:
      - targets: ["127.0.0.1:9100"]
  - job_name: jetrun
    scrape_interval: 5s
    static_configs:
      - targets: ["127.0.0.1:9600"]
"#;

    #[test]
    fn the_scrape_config_is_pointed_at_the_test_runner() {
        let target = SocketAddr::from(([127, 0, 0, 1], 41234));
        let text = scrape_config_for(CONFIG, Path::new("/repo/deploy/prometheus"), target);
        let doc: Yaml = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(doc["global"]["scrape_interval"], "1s");
        assert_eq!(doc["global"]["evaluation_interval"], "1s");
        assert_eq!(doc["rule_files"][0], "/repo/deploy/prometheus/alerts.yml");
        let jobs = doc["scrape_configs"].as_sequence().unwrap();
        assert_eq!(jobs[0]["static_configs"][0]["targets"][0], "127.0.0.1:9100");
        assert_eq!(jobs[1]["scrape_interval"], "1s");
        assert_eq!(
            jobs[1]["static_configs"][0]["targets"][0],
            "127.0.0.1:41234"
        );
    }

    #[test]
    #[should_panic(expected = "should scrape 127.0.0.1:9600")]
    fn a_changed_target_is_noticed() {
        let changed = CONFIG.replace("9600", "9700");
        scrape_config_for(&changed, Path::new("."), "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            url_encode(r#"sum(rate(x{f=~".*"}[1m]))"#),
            "sum%28rate%28x%7Bf%3D~%22.%2A%22%7D%5B1m%5D%29%29"
        );
    }
}
