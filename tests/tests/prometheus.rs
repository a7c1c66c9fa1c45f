//! jetrun as Prometheus and Grafana see it: a real Prometheus (Debian's
//! package), started with the repository's scrape config pointed at a
//! running jetrun, stores `jetrun_events_processed_total` for the function
//! the test drove, loads the alert rules without error and answers every
//! query of the Grafana dashboard with data, its `job` and `instance`
//! variables set to the runner's. The runner has a stream function, request
//! functions answering 200, 400, 500 and 504, an aggregate whose command
//! conflicts with a second writer, a projection, and a function stuck in
//! its handler with events waiting: the request-error and stalled-consumer
//! alerts go pending for exactly those, and no other alert. Every metric
//! name in the dashboard and the alert rules is one jetrun exports, and
//! every panel query is filtered by `job` and `instance`; promtool accepts
//! the config and the rules and passes their unit tests. Where Prometheus
//! is not installed, the tests that need it print `SKIPPED: ...` and
//! return.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use jetrun_e2e::{
    metric, publish_bare, repo_root, scrape, scrape_config_for, toml_str, tool_or_skip,
    wait_for_consumer, wait_ready, wait_until, Prometheus, Runner, TestBed, INSTALL_PROMETHEUS,
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
const SAGA: &str = jetrun_e2e::IDLE_SAGA;

/// A request function per answer: `$1` says which (the input document, a
/// CloudEvent, is on stdin).
const REPLY_SH: &str = r#"cat > /dev/null
case "$1" in
  ok) echo '{"ok": true}' ;;
  reject) echo "order_id is required" >&2; exit 65 ;;
  crash) echo "database unreachable" >&2; exit 1 ;;
  slow) sleep 3 ;;
esac
"#;

/// The command handler of aggregate `order`: appends `item_added`. Its first
/// run marks `$1/ran` and waits for `$1/go`, so the test can append to the
/// instance meanwhile (the second writer) and make the append conflict.
const ADD_ITEM_SH: &str = r#"cat > /dev/null
if [ ! -e "$1/ran" ]; then
  touch "$1/ran"
  while [ ! -e "$1/go" ] && [ -d "$1" ]; do sleep 0.05; done
fi
echo '{"append": [{"type": "item_added", "data": {"n": 1}}]}'
"#;

/// The projection: one order more for the event's user.
const PROJECT_SH: &str = r#"cat > /dev/null
echo '{"state": {"orders": 1}}'
"#;

/// A handler that never returns while the test runs: it waits as long as
/// the test's directory `$1` exists, so it also ends with the test.
const HOLD_SH: &str = r#"cat > /dev/null
while [ -d "$1" ]; do sleep 0.2; done
"#;

/// The request functions and the code each answers with.
const REQUESTS: [(&str, &str); 4] = [
    ("ok", "200"),
    ("reject", "400"),
    ("crash", "500"),
    ("slow", "504"),
];
/// The command handler of aggregate `order`, on `cmd.order.add`.
const AGGREGATE: &str = "order";
/// The projection function, on `ev.order.placed`.
const PROJECTION: &str = "orders_by_user";
/// The function whose handler never returns, on `ev.stuck`.
const STUCK: &str = "stuck";

/// Starts jetrun with a `noop` function on `ev.ping`, an idle saga, the
/// request functions, aggregate `order`, projection `orders_by_user` and
/// function `stuck`, and waits until it is ready and the stream functions'
/// consumers are bound.
async fn start_jetrun(bed: &TestBed) -> Runner {
    let sh = |name: &str, body: &str| toml_str(bed.write_script(name, body).to_string_lossy());
    let dir = toml_str(bed.dir().to_string_lossy());
    let (reply, add_item, project, hold) = (
        sh("reply.sh", REPLY_SH),
        sh("add_item.sh", ADD_ITEM_SH),
        sh("project.sh", PROJECT_SH),
        sh("hold.sh", HOLD_SH),
    );
    let mut config = format!(
        r#"{base}
[streams.ORDERS]
subjects = ["order.>"]

[aggregates.{AGGREGATE}]
stream = "ORDERS"
subject = "order.{{id}}"
id = "order_id"

[functions.{FUNCTION}]
subjects = ["ev.ping"]
builtin = "noop"

# Scheduled (hourly: no tick comes during the test), so that the schedule
# families are exported for the dashboard's Schedules row.
[functions.hourly]
schedule = "@every 1h"
builtin = "noop"

[functions.add_item]
request = "cmd.order.add"
aggregate = "{AGGREGATE}"
exec = ["sh", {add_item}, {dir}]
timeout = "30s"

[functions.{PROJECTION}]
subjects = ["ev.order.placed"]
projection = {{ bucket = "{PROJECTION}", key = "/user_id" }}
exec = ["sh", {project}]

[functions.{STUCK}]
subjects = ["ev.stuck"]
exec = ["sh", {hold}, {dir}]
timeout = "5m"
concurrency = 1
max_ack_pending = 1
{SAGA}"#,
        base = bed.base_config(),
    );
    for (name, code) in REQUESTS {
        // Only `slow` is to time out: the others get time to start `sh`
        // on a loaded machine.
        let timeout = if code == "504" { "1s" } else { "30s" };
        config.push_str(&format!(
            "\n[functions.{name}]\nrequest = \"svc.{name}\"\nexec = [\"sh\", {reply}, \"{name}\"]\ntimeout = \"{timeout}\"\n"
        ));
    }
    let runner = Runner::start(&bed.write_config(&config));
    let addr = bed.metrics;
    wait_ready(addr).await;
    let js = bed.jetstream().await;
    for consumer in [FUNCTION, PROJECTION, STUCK] {
        wait_for_consumer(&js, TestBed::STREAM, consumer).await;
    }
    runner
}

/// What the new panels and alerts read, made to happen: each request
/// function answered once; a command on `order` o1 conflicting with an
/// event the test appends while the handler runs; an order placed for the
/// projection; and two events for `stuck`, one held in its handler and one
/// waiting. Returns once `/metrics` counts all of it.
async fn drive_the_rest(bed: &TestBed, runner: &Runner) {
    let client = bed.client().await;
    for (name, code) in REQUESTS {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(format!("svc.{name}"), "{}".into()),
        )
        .await
        .expect("an answer within 10 s")
        .unwrap_or_else(|e| panic!("request to svc.{name}: {e}"));
        let got = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map_or("200".to_string(), |c| c.to_string());
        assert_eq!(got, code, "svc.{name}\n{}", runner.log());
    }

    // Two writers on one instance: the command's first run reads version 0,
    // the test appends meanwhile, the append conflicts and the run is redone.
    let command = tokio::spawn({
        let client = client.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                client.request("cmd.order.add", r#"{"order_id": "o1"}"#.into()),
            )
            .await
        }
    });
    let ran = bed.path("ran");
    wait_until(Duration::from_secs(20), "the command handler runs", || {
        let ran = ran.clone();
        async move { ran.exists() }
    })
    .await;
    let js = bed.jetstream().await;
    js.publish("order.o1.item_added", r#"{"n": 0}"#.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    std::fs::write(bed.path("go"), "").expect("write go");
    let reply = command
        .await
        .expect("the command task")
        .expect("a reply within 30 s")
        .expect("a reply");
    assert!(
        reply
            .headers
            .is_none_or(|h| h.get("Nats-Service-Error-Code").is_none()),
        "the command succeeds after its conflict\n{}",
        runner.log()
    );

    publish_bare(&client, "ev.order.placed", r#"{"user_id": "u1"}"#).await;
    for _ in 0..2 {
        publish_bare(&client, "ev.stuck", "{}").await;
    }

    let addr = bed.metrics;
    wait_until(
        Duration::from_secs(20),
        "/metrics counts the requests, the conflict, the projection update and the waiting event",
        || async move {
            let text = scrape(addr).await;
            let is = |name: &str, labels: &[(&str, &str)], value: f64| {
                metric(&text, name, labels) == Some(value)
            };
            REQUESTS.iter().all(|&(function, code)| {
                is(
                    "jetrun_requests_total",
                    &[("function", function), ("code", code)],
                    1.0,
                )
            }) && is(
                "jetrun_aggregate_conflicts_total",
                &[("aggregate", AGGREGATE)],
                1.0,
            ) && is(
                "jetrun_aggregate_events_appended_total",
                &[("aggregate", AGGREGATE)],
                1.0,
            ) && is(
                "jetrun_projection_updates_total",
                &[("function", PROJECTION), ("outcome", "stored")],
                1.0,
            ) && is("jetrun_consumer_pending", &[("function", STUCK)], 1.0)
                && is("jetrun_function_bound", &[("function", STUCK)], 1.0)
                && is("jetrun_ready", &[], 1.0)
        },
    )
    .await;
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

fn dashboard() -> Json {
    serde_json::from_str(&read("grafana/jetrun.json")).expect("jetrun.json is JSON")
}

/// Every PromQL expression of the dashboard's panels (rows included).
fn panel_queries() -> Vec<String> {
    let mut queries = Vec::new();
    collect_exprs(&dashboard()["panels"], &mut queries);
    assert!(queries.len() > 10, "the dashboard has queries: {queries:?}");
    queries
}

/// The dashboard's template variables with a query, and the query.
fn variable_queries() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let variables: Vec<(String, String)> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|variable| {
            let query = variable["query"]["query"].as_str()?;
            Some((variable["name"].as_str()?.to_string(), query.to_string()))
        })
        .collect();
    let names: Vec<&str> = variables.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["job", "instance", "function", "saga"]);
    variables
}

/// Every PromQL expression of the dashboard: its panels' and its template
/// variables'.
fn dashboard_queries() -> Vec<String> {
    let mut queries = panel_queries();
    queries.extend(variable_queries().into_iter().map(|(_, query)| query));
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

/// A dashboard query with Grafana's variables filled in as Grafana would:
/// `job` and `instance` those of the runner Prometheus scrapes, every
/// function and saga.
fn with_variables(query: &str, instance: &str) -> String {
    query
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$job", "jetrun")
        .replace("$instance", instance)
        .replace("$function", ".*")
        .replace("$saga", ".*")
}

/// The selectors of `expr` (each metric name with its `{...}`, if any) that
/// do not filter by `job=~"$job"` and `instance=~"$instance"`.
fn unfiltered_selectors(expr: &str) -> Vec<String> {
    let mut unfiltered = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let word_len = rest[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len() - start);
        let word = &rest[start..start + word_len];
        let after = &rest[start + word_len..];
        let selector = after
            .strip_prefix('{')
            .and_then(|inner| inner.split_once('}'))
            .map(|(labels, _)| labels);
        if metric_names_in(word).len() == 1 {
            let filtered = selector.is_some_and(|labels| {
                labels.contains(r#"job=~"$job""#) && labels.contains(r#"instance=~"$instance""#)
            });
            if !filtered {
                unfiltered.push(format!("{word}{{{}}}", selector.unwrap_or_default()));
            }
        }
        // Past the word and its selector, so label values are not read as words.
        let skip = start + word_len + selector.map_or(0, |labels| labels.len() + 2);
        rest = &rest[skip..];
    }
    unfiltered
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
    let runner = start_jetrun(&bed).await;
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
    // Requests, a conflict, a projection update and a stuck function, while
    // Prometheus watches.
    drive_the_rest(&bed, &runner).await;

    // The alert rules are loaded and evaluate without error.
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
            "JetrunConsumerStalled",
            "JetrunDeadLetters",
            "JetrunNotReady",
            "JetrunRequestErrors",
            "JetrunSagaStuck"
        ]),
        "{data}"
    );
    // The request functions answering 500 and 504, and the function stuck
    // with an event waiting, raise alerts (pending: their `for` is minutes
    // long), and nothing else does.
    let expected = BTreeSet::from([
        alert("JetrunConsumerStalled", STUCK, ""),
        alert("JetrunRequestErrors", "crash", "500"),
        alert("JetrunRequestErrors", "slow", "504"),
    ]);
    let expected = &expected;
    wait_until(
        Duration::from_secs(30),
        &format!("Prometheus raises exactly {expected:?}"),
        || async move { alerts_of(&prometheus.api("alerts").await) == *expected },
    )
    .await;
    let alerts = prometheus.api("alerts").await;
    assert!(
        alerts["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().all(|alert| alert["state"] == "pending")),
        "{alerts}"
    );

    // Each template variable lists the runner's job, instance, function
    // and saga...
    let instance = bed.metrics.to_string();
    for (name, query) in variable_queries() {
        let (selector, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(", "))
            .unwrap_or_else(|| panic!("variable {name}: {query} is label_values(SELECTOR, LABEL)"));
        let want = match label {
            "job" => "jetrun",
            "instance" => instance.as_str(),
            "function" => FUNCTION,
            "saga" => "idle",
            other => panic!("variable {name} lists label {other}"),
        };
        let promql = with_variables(&format!("group by ({label}) ({selector})"), &instance);
        let values: Vec<Json> = prometheus
            .query(&promql)
            .await
            .iter()
            .map(|series| series["metric"][label].clone())
            .collect();
        assert!(
            values.contains(&Json::from(want)),
            "variable {name} ({promql}) lists {values:?}, not {want}"
        );
    }
    // ...and every panel's query gets data for them.
    for query in panel_queries() {
        let promql = with_variables(&query, &instance);
        let promql = &promql;
        wait_until(
            Duration::from_secs(30),
            &format!("the dashboard query {promql:?} returns data"),
            || async move { !prometheus.query(promql).await.is_empty() },
        )
        .await;
    }
}

/// An alert as [`alerts_of`] lists it: its name, function and code.
fn alert(name: &str, function: &str, code: &str) -> (String, String, String) {
    (name.into(), function.into(), code.into())
}

/// The alerts of an `/api/v1/alerts` answer, pending or firing, as
/// [`alert`]s.
fn alerts_of(data: &Json) -> BTreeSet<(String, String, String)> {
    data["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let label = |name: &str| a["labels"][name].as_str().unwrap_or_default().to_string();
            (label("alertname"), label("function"), label("code"))
        })
        .collect()
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
fn every_panel_query_is_filtered_by_job_and_instance() {
    for query in panel_queries() {
        let unfiltered = unfiltered_selectors(&query);
        assert!(
            unfiltered.is_empty(),
            "{unfiltered:?} in {query} lack job=~\"$job\", instance=~\"$instance\""
        );
    }
    // The chain of variables: the instances of the chosen jobs.
    let variables: std::collections::BTreeMap<String, String> =
        variable_queries().into_iter().collect();
    assert_eq!(variables["job"], "label_values(jetrun_build_info, job)");
    assert_eq!(
        variables["instance"],
        r#"label_values(jetrun_build_info{job=~"$job"}, instance)"#
    );
}

#[test]
fn unfiltered_selectors_are_found() {
    let filtered = r#"job=~"$job", instance=~"$instance""#;
    assert_eq!(
        unfiltered_selectors(&format!(
            r#"sum by (function) (rate(jetrun_requests_total{{{filtered}, code=~"5.."}}[1m])) / sum(jetrun_requests_total{{job=~"$job"}}) and on (job, instance) process_cpu_seconds_total"#
        )),
        [
            r#"jetrun_requests_total{job=~"$job"}"#,
            "process_cpu_seconds_total{}"
        ]
    );
    assert_eq!(
        unfiltered_selectors(&format!(r#"min(jetrun_ready{{{filtered}}})"#)),
        Vec::<String>::new()
    );
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
