//! jetrun as Prometheus and Grafana see it: a real Prometheus (Debian's
//! package), started with the repository's scrape config pointed at a
//! running jetrun, stores `jetrun_events_processed_total` for the function
//! the test drove, loads the alert rules without error and answers every
//! query of the Grafana dashboard with data; every metric name in the
//! dashboard and the alert rules is one jetrun exports; promtool accepts the
//! config and the rules and passes their unit tests. Where Prometheus is not
//! installed, the tests that need it print `SKIPPED: ...` and return.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use jetrun_e2e::{
    metric, publish_bare, repo_root, scrape, scrape_config_for, tool_or_skip, wait_for_consumer,
    wait_ready, wait_until, Prometheus, Runner, TestBed, INSTALL_PROMETHEUS,
};
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

const FUNCTION: &str = "ping";
const EVENTS: u64 = 5;

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

fn read(path: &str) -> String {
    let path = deploy(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A saga no event starts: its metric series (at 0) are what the
/// dashboard's and the alerts' saga queries read.
const SAGA: &str = r#"
[sagas.idle]
start = "ev.idle.started"
key = "id"
completed = "ev.idle.completed"
failed = "ev.idle.failed"

[[sagas.idle.steps]]
name = "wait"
command = "ev.idle.wait"
success = "ev.idle.waited"
"#;

/// Starts jetrun with one `noop` function on `ev.ping` and an idle saga, and
/// waits until it is ready and the function's consumer is bound.
async fn start_jetrun(bed: &TestBed) -> Runner {
    let config = bed.write_config(&format!(
        "{}\n[functions.{FUNCTION}]\nsubjects = [\"ev.ping\"]\nbuiltin = \"noop\"\n{SAGA}",
        bed.base_config()
    ));
    let runner = Runner::start(&config);
    let addr = bed.metrics;
    wait_ready(addr).await;
    wait_for_consumer(&bed.jetstream().await, TestBed::STREAM, FUNCTION).await;
    runner
}

/// Publishes `count` events to the function and waits until `/metrics`
/// counts `total` successes.
async fn drive(bed: &TestBed, count: u64, total: u64) {
    let client = bed.client().await;
    for _ in 0..count {
        publish_bare(&client, "ev.ping", "{}").await;
    }
    let addr = bed.metrics;
    wait_until(
        Duration::from_secs(20),
        "/metrics counts every success",
        || async move {
            let text = scrape(addr).await;
            metric(
                &text,
                "jetrun_events_processed_total",
                &[("function", FUNCTION), ("outcome", "success")],
            ) == Some(total as f64)
        },
    )
    .await;
}

/// Every PromQL expression of the dashboard's panels (rows included) and
/// its template variables' queries.
fn dashboard_queries() -> Vec<String> {
    let dashboard: Json =
        serde_json::from_str(&read("grafana/jetrun.json")).expect("jetrun.json is JSON");
    let mut queries = Vec::new();
    collect_exprs(&dashboard["panels"], &mut queries);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_string());
        }
    }
    assert!(queries.len() > 10, "the dashboard has queries: {queries:?}");
    queries
}

fn collect_exprs(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Json::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

/// Every `expr` of `deploy/prometheus/alerts.yml`.
fn alert_exprs() -> Vec<String> {
    let rules: Yaml = serde_yaml_ng::from_str(&read("prometheus/alerts.yml")).expect("YAML");
    let exprs: Vec<String> = rules["groups"]
        .as_sequence()
        .expect("alerts.yml has groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("a group has rules"))
        .map(|rule| {
            rule["expr"]
                .as_str()
                .expect("a rule has an expr")
                .to_string()
        })
        .collect();
    assert!(!exprs.is_empty(), "alerts.yml has rules");
    exprs
}

/// A dashboard query with Grafana's variables filled in as Grafana would.
fn with_variables(query: &str) -> String {
    query
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$function", ".*")
        .replace("$saga", ".*")
}

/// The metric names an expression reads: its identifiers starting with
/// `jetrun_` or `process_`.
fn metric_names_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("jetrun_") || word.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

/// The names a `/metrics` text exposes, from its `# TYPE` lines: each
/// family, and for a histogram its `_bucket`, `_sum` and `_count` series.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_metrics_jetrun_exports() {
    let bed = TestBed::new();
    let _runner = start_jetrun(&bed).await;
    let exported = exported_names(&scrape(bed.metrics).await);
    assert!(
        exported.contains("jetrun_handler_duration_seconds_bucket")
            && exported.contains("jetrun_config_reloads_total"),
        "/metrics has jetrun's families: {exported:?}"
    );
    for (file, exprs) in [
        ("grafana/jetrun.json", dashboard_queries()),
        ("prometheus/alerts.yml", alert_exprs()),
    ] {
        let mut used = BTreeSet::new();
        for expr in &exprs {
            used.extend(metric_names_in(expr));
        }
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "deploy/{file} uses metrics jetrun does not export: {unknown:?}\nexported: {exported:?}"
        );
        assert!(!used.is_empty(), "deploy/{file} reads no jetrun metric");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_jetrun_with_the_repo_config() {
    let test = "a_real_prometheus_scrapes_jetrun_with_the_repo_config";
    let Some(bin) = tool_or_skip("prometheus", "PROMETHEUS_BIN", test, INSTALL_PROMETHEUS) else {
        return;
    };
    let bed = TestBed::new();
    let _runner = start_jetrun(&bed).await;
    drive(&bed, EVENTS, EVENTS).await;

    let config = scrape_config_for(
        &read("prometheus/prometheus.yml"),
        &deploy("prometheus"),
        bed.metrics,
    );
    let prometheus = Prometheus::start(&bin, &config).await;

    // The series of the function, with the count the test drove.
    let prometheus = &prometheus;
    let successes = || async move {
        prometheus
            .query("jetrun_events_processed_total")
            .await
            .into_iter()
            .find(|series| {
                series["metric"]["function"] == FUNCTION && series["metric"]["outcome"] == "success"
            })
    };
    wait_until(
        Duration::from_secs(30),
        "Prometheus has the function's successes",
        || async move { successes().await.is_some_and(|s| s["value"][1] == "5") },
    )
    .await;
    let series = successes().await.expect("the series is still there");
    assert_eq!(series["metric"]["job"], "jetrun", "{series}");
    assert_eq!(
        series["metric"]["instance"],
        bed.metrics.to_string(),
        "{series}"
    );

    // More events while Prometheus watches: rates become non-zero.
    drive(&bed, EVENTS, 2 * EVENTS).await;
    wait_until(
        Duration::from_secs(30),
        "Prometheus sees the new successes",
        || async move { successes().await.is_some_and(|s| s["value"][1] == "10") },
    )
    .await;

    // The alert rules are loaded and evaluate without error; a healthy
    // runner raises none of them.
    wait_until(
        Duration::from_secs(30),
        "every alert rule has been evaluated without error",
        || async move {
            let data = prometheus.api("rules").await;
            let rules: Vec<&Json> = rules_of(&data);
            !rules.is_empty() && rules.iter().all(|rule| rule["health"] == "ok")
        },
    )
    .await;
    let data = prometheus.api("rules").await;
    let names: BTreeSet<&str> = rules_of(&data)
        .iter()
        .filter_map(|rule| rule["name"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "JetrunBacklogGrowing",
            "JetrunDeadLetters",
            "JetrunNotReady",
            "JetrunSagaStuck"
        ]),
        "{data}"
    );
    let alerts = prometheus.api("alerts").await;
    assert_eq!(
        alerts["alerts"],
        Json::Array(Vec::new()),
        "no alert for a healthy runner"
    );

    // The dashboard's `function` variable lists the function...
    let functions = prometheus
        .api("label/function/values?match%5B%5D=jetrun_events_received_total")
        .await;
    assert!(
        functions
            .as_array()
            .is_some_and(|f| f.contains(&Json::from(FUNCTION))),
        "{functions}"
    );
    // ...and every panel's query gets data.
    for query in dashboard_queries() {
        if query.starts_with("label_values(") {
            continue;
        }
        let promql = with_variables(&query);
        let promql = &promql;
        wait_until(
            Duration::from_secs(30),
            &format!("the dashboard query {promql:?} returns data"),
            || async move { !prometheus.query(promql).await.is_empty() },
        )
        .await;
    }
}

fn rules_of(data: &Json) -> Vec<&Json> {
    data["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .collect()
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_their_tests_pass() {
    let test = "promtool_accepts_the_config_and_the_rules_and_their_tests_pass";
    let Some(promtool) = tool_or_skip("promtool", "PROMTOOL_BIN", test, INSTALL_PROMETHEUS) else {
        return;
    };
    for args in [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let output = Command::new(&promtool)
            .args(args)
            .current_dir(deploy("prometheus"))
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn metric_names_are_read_from_expressions() {
    assert_eq!(
        metric_names_in(
            r#"histogram_quantile(0.99, sum by (le) (rate(jetrun_handler_duration_seconds_bucket{function=~"$function", job="jetrun"}[5m])))"#
        ),
        ["jetrun_handler_duration_seconds_bucket"]
    );
    assert_eq!(
        metric_names_in("process_resident_memory_bytes and on (job) jetrun_build_info"),
        ["process_resident_memory_bytes", "jetrun_build_info"]
    );
    let text =
        "# TYPE jetrun_handler_duration_seconds histogram\n# TYPE jetrun_nats_connected gauge\n";
    assert_eq!(
        exported_names(text),
        BTreeSet::from(
            [
                "jetrun_handler_duration_seconds_bucket",
                "jetrun_handler_duration_seconds_count",
                "jetrun_handler_duration_seconds_sum",
                "jetrun_nats_connected"
            ]
            .map(String::from)
        )
    );
}
