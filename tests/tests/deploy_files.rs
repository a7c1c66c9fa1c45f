//! The files under `deploy/` are usable as they stand: every YAML and JSON
//! file parses, nats-server accepts every NATS config, the Kubernetes
//! manifests agree with each other, with the Dockerfile and with `jetrun
//! check`, and the systemd unit is hardened and accepted by systemd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use jetrun_e2e::{jetrun_bin, nats_server_bin, repo_root, run_check, tool_or_skip};
use serde::Deserialize as _;
use serde_yaml_ng::Value as Yaml;

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// Every file under `deploy/` whose name ends with one of `extensions`.
fn files_ending(extensions: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, extensions, out);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| extensions.contains(&e))
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy_dir(), extensions, &mut files);
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of a (multi-document) YAML file.
fn yaml_documents(path: &Path) -> Vec<Yaml> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            Yaml::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = files_ending(&["yml", "yaml"]);
    let names: Vec<String> = files.iter().map(|f| relative(f)).collect();
    for expected in [
        "deploy/kubernetes/jetrun.yaml",
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/prometheus.yml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} is among {names:?}"
        );
    }
    for file in &files {
        let documents = yaml_documents(file);
        assert!(
            documents.iter().any(|d| !d.is_null()),
            "{} holds no YAML document",
            relative(file)
        );
    }
}

#[test]
fn every_json_file_under_deploy_parses() {
    let files = files_ending(&["json"]);
    assert!(
        files.iter().any(|f| f.ends_with("grafana/jetrun.json")),
        "the Grafana dashboard is among {files:?}"
    );
    for file in &files {
        let value: serde_json::Value = serde_json::from_str(&read(file))
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", relative(file)));
        assert!(value.is_object(), "{} is a JSON object", relative(file));
    }
}

#[test]
fn the_grafana_dashboard_is_importable() {
    let path = deploy_dir().join("grafana/jetrun.json");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&path)).expect("JSON");
    assert_eq!(dashboard["uid"], "jetrun");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    let variables: BTreeMap<&str, &serde_json::Value> = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables")
        .iter()
        .map(|v| (v["name"].as_str().expect("a variable has a name"), v))
        .collect();
    assert_eq!(variables["DS_PROMETHEUS"]["type"], "datasource");
    assert_eq!(
        variables["function"]["query"]["query"],
        "label_values(jetrun_events_received_total, function)"
    );
    // Every panel (rows aside) reads from the dashboard's data source, and
    // panel ids are unique.
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel has an id")),
            "duplicate panel id in {panel}"
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{}",
                panel["title"]
            );
            assert!(
                panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{} has queries",
                panel["title"]
            );
        }
    }
}

#[test]
fn nats_server_accepts_every_nats_config() {
    let files = files_ending(&["conf"]);
    assert!(
        files.len() >= 4,
        "single.conf and the cluster's three: {files:?}"
    );
    for file in &files {
        let output = Command::new(nats_server_bin())
            .arg("-t")
            .arg("-c")
            .arg(file)
            .output()
            .expect("run nats-server -t");
        assert!(
            output.status.success(),
            "nats-server -t -c {} failed ({}):\n{}",
            relative(file),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        // A function runner must not lose an event it was told was stored.
        assert!(
            read(file).contains("sync_interval: always"),
            "{} fsyncs every write",
            relative(file)
        );
    }
}

/// The documents of `deploy/kubernetes/jetrun.yaml` by kind.
fn kubernetes_manifests() -> BTreeMap<String, Yaml> {
    let path = deploy_dir().join("kubernetes/jetrun.yaml");
    let mut by_kind = BTreeMap::new();
    for document in yaml_documents(&path) {
        let kind = document["kind"].as_str().expect("a manifest has a kind");
        assert!(
            document["apiVersion"].is_string(),
            "{kind} has an apiVersion"
        );
        assert!(
            document["metadata"]["name"].is_string(),
            "{kind} has a name"
        );
        by_kind.insert(kind.to_string(), document);
    }
    by_kind
}

#[test]
fn the_kubernetes_manifests_hang_together() {
    let manifests = kubernetes_manifests();
    let config_map = &manifests["ConfigMap"];
    let deployment = &manifests["Deployment"];
    let service = &manifests["Service"];

    // The config in the ConfigMap is one `jetrun check` accepts, listening
    // where the probes and Prometheus look.
    let toml = config_map["data"]["jetrun.toml"]
        .as_str()
        .expect("the ConfigMap holds jetrun.toml");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jetrun.toml");
    std::fs::write(&path, toml).expect("write jetrun.toml");
    let (code, stderr) = run_check(&path);
    assert_eq!(
        code, 0,
        "jetrun check rejects the ConfigMap's config:\n{stderr}"
    );
    assert!(toml.contains(r#"listen = "0.0.0.0:9600""#), "{toml}");

    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], *labels);
    assert_eq!(service["spec"]["selector"], *labels);
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9600");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["name"], "metrics");
    assert_eq!(container["ports"][0]["containerPort"], 9600);
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "metrics");
    assert_eq!(service["spec"]["ports"][0]["port"], 9600);

    // The volume is the ConfigMap, mounted where the image's CMD looks.
    assert_eq!(
        pod["spec"]["volumes"][0]["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/jetrun");
    assert_eq!(
        container["args"],
        serde_yaml_ng::from_str::<Yaml>(r#"["run", "-c", "/etc/jetrun/jetrun.toml"]"#).unwrap()
    );

    // The pod runs as the image's unprivileged user.
    let uid = pod["spec"]["securityContext"]["runAsUser"]
        .as_u64()
        .expect("runAsUser");
    assert_ne!(uid, 0);
    let dockerfile = read(&deploy_dir().join("Dockerfile"));
    assert!(
        dockerfile.contains(&format!("\nUSER {uid}:{uid}\n")),
        "deploy/Dockerfile runs as {uid}, the manifest's runAsUser"
    );
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let dockerfile = read(&deploy_dir().join("Dockerfile"));
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with(' ') && !line.is_empty())
        .collect();
    let from: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(from.len(), 2, "a build stage and a runtime stage: {from:?}");
    assert!(from[0].starts_with("FROM rust:") && from[0].ends_with(" AS build"));
    assert!(from[1].starts_with("FROM debian:") && from[1].contains("-slim"));
    let runtime = &instructions[instructions
        .iter()
        .position(|l| l == from[1])
        .expect("runtime stage")..];
    for expected in [
        "COPY --from=build /usr/local/bin/jetrun /usr/local/bin/jetrun",
        "ENTRYPOINT [\"jetrun\"]",
        "CMD [\"run\", \"-c\", \"/etc/jetrun/jetrun.toml\"]",
    ] {
        assert!(
            runtime.contains(&expected),
            "the runtime stage has {expected}"
        );
    }
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "USER {user} is not root"
    );
}

#[test]
fn the_systemd_unit_is_hardened_and_systemd_accepts_it() {
    let unit_path = deploy_dir().join("systemd/jetrun.service");
    let unit = read(&unit_path);
    for directive in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=jetrun",
        "ExecStartPre=/usr/local/bin/jetrun check -c /etc/jetrun/jetrun.toml",
        "ExecStart=/usr/local/bin/jetrun run -c /etc/jetrun/jetrun.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "RestartPreventExitStatus=2",
    ] {
        assert!(
            unit.lines().any(|line| line == directive),
            "the unit has {directive}"
        );
    }
    let test = "the_systemd_unit_is_hardened_and_systemd_accepts_it (systemd-analyze verify)";
    let Some(analyze) = tool_or_skip(
        "systemd-analyze",
        "SYSTEMD_ANALYZE_BIN",
        test,
        "install Debian's systemd package",
    ) else {
        return;
    };
    // `verify` wants the programs to exist: point it at the jetrun built here.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("jetrun.service");
    let bin = jetrun_bin();
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/jetrun", &bin.to_string_lossy()),
    )
    .expect("write the unit");
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify deploy/systemd/jetrun.service ({}):\n{stderr}",
        output.status
    );
}
