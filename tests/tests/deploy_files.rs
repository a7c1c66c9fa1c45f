//! The files under `deploy/` are usable as they stand: every YAML and JSON
//! file parses, nats-server accepts every NATS config, the Kubernetes
//! manifests (raw, and as Kustomize renders the base and the overlay) pass
//! Pod Security "restricted" and the API schema and agree with each other,
//! with the Dockerfile and with `jetrun check`, `--watch` sees a ConfigMap
//! update, the unit, the image and the manifests spell out the default log
//! filter, and the systemd unit is hardened and accepted by systemd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use jetrun_e2e::{
    jetrun_bin, metric, nats_server_bin, repo_root, run_check, run_command, run_command_with_env,
    scrape, tool_or_skip, wait_for_consumer, wait_until, Runner, TestBed,
};
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
        "deploy/kubernetes/base/jetrun.yaml",
        "deploy/kubernetes/base/kustomization.yaml",
        "deploy/kubernetes/example/kustomization.yaml",
        "deploy/kubernetes/servicemonitor/servicemonitor.yaml",
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
        "label_values(jetrun_events_received_total{job=~\"$job\", instance=~\"$instance\"}, function)"
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

/// jetrun's log filter when `JETRUN_LOG` is unset, read from where the runner
/// sets it; the unit, the Dockerfile and the manifests spell out this one.
fn default_log_filter() -> String {
    let source = read(&repo_root().join("runner/src/logging.rs"));
    let (_, rest) = source
        .split_once("const DEFAULT_FILTER: &str = \"")
        .expect("runner/src/logging.rs sets the default filter in const DEFAULT_FILTER");
    rest.split_once('"').expect("a closing quote").0.to_string()
}

const KUBERNETES_BASE: &str = "deploy/kubernetes/base/jetrun.yaml";
/// Where the pods mount the Secret with the NATS credentials.
const NATS_AUTH_MOUNT: &str = "/etc/jetrun-nats";

/// Every document of `path`, relative to the repository root.
fn manifest(path: &str) -> Vec<Yaml> {
    yaml_documents(&repo_root().join(path))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The one document of `kind` among `documents`.
fn of_kind<'a>(documents: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = documents.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} among the manifests");
    found[0]
}

/// The pod templates (metadata and spec) of every workload among
/// `documents`, named `Kind/name`.
fn pod_templates(documents: &[Yaml]) -> Vec<(String, &Yaml, &Yaml)> {
    let mut pods = Vec::new();
    for document in documents {
        let kind = document["kind"].as_str().unwrap_or_default();
        let name = format!(
            "{kind}/{}",
            document["metadata"]["name"].as_str().unwrap_or("?")
        );
        let template = match kind {
            "Pod" => Some(document),
            "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicaSet"
            | "Job"
            | "ReplicationController" => Some(&document["spec"]["template"]),
            "CronJob" => Some(&document["spec"]["jobTemplate"]["spec"]["template"]),
            _ => None,
        };
        if let Some(template) = template {
            pods.push((name, &template["metadata"], &template["spec"]));
        }
    }
    pods
}

fn items(value: &Yaml) -> &[Yaml] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

/// Every way `pod` (its metadata and spec) breaks the Pod Security
/// "restricted" profile, which includes "baseline": the rules of the
/// Kubernetes documentation's Pod Security Standards, one by one.
fn restricted_violations(metadata: &Yaml, spec: &Yaml) -> Vec<String> {
    let mut found = Vec::new();
    let pod = &spec["securityContext"];

    // Baseline: host namespaces, host ports, privileged, capabilities, host
    // paths, AppArmor, SELinux, /proc, seccomp, sysctls, host processes.
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field] == true {
            found.push(format!("spec.{field} is true"));
        }
    }
    if pod["windowsOptions"]["hostProcess"] == true {
        found.push("spec.securityContext.windowsOptions.hostProcess is true".into());
    }
    const SAFE_SYSCTLS: &[&str] = &[
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    ];
    for sysctl in items(&pod["sysctls"]) {
        let name = sysctl["name"].as_str().unwrap_or_default();
        if !SAFE_SYSCTLS.contains(&name) {
            found.push(format!(
                "spec.securityContext.sysctls has the unsafe {name}"
            ));
        }
    }
    if let Some(annotations) = metadata["annotations"].as_mapping() {
        for (key, value) in annotations {
            let (key, value) = (
                key.as_str().unwrap_or_default(),
                value.as_str().unwrap_or_default(),
            );
            if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && value != "runtime/default"
                && !value.starts_with("localhost/")
            {
                found.push(format!("annotation {key}: {value}"));
            }
            if key.starts_with("seccomp.security.alpha.kubernetes.io/") {
                found.push(format!("annotation {key}: {value} (use seccompProfile)"));
            }
        }
    }

    // Restricted: volume types, non-root, seccomp, privilege escalation,
    // capabilities dropped.
    const VOLUME_TYPES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in items(&spec["volumes"]) {
        let name = volume["name"].as_str().unwrap_or("?");
        let kinds: Vec<&str> = volume
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.as_str())
            .filter(|k| *k != "name")
            .collect();
        if kinds.len() != 1 || !VOLUME_TYPES.contains(&kinds[0]) {
            found.push(format!(
                "volume {name} is {kinds:?}, not one of {VOLUME_TYPES:?}"
            ));
        }
    }
    let pod_non_root = pod["runAsNonRoot"] == true;
    if pod["runAsNonRoot"] == false {
        found.push("spec.securityContext.runAsNonRoot is false".into());
    }
    if pod["runAsUser"] == 0 {
        found.push("spec.securityContext.runAsUser is 0".into());
    }
    let confined =
        |profile: &Yaml| profile["type"] == "RuntimeDefault" || profile["type"] == "Localhost";
    let pod_seccomp = confined(&pod["seccompProfile"]);
    if !pod["seccompProfile"].is_null() && !pod_seccomp {
        found.push(format!(
            "spec.securityContext.seccompProfile is {:?}",
            pod["seccompProfile"]
        ));
    }
    found.extend(selinux_violations(
        &pod["seLinuxOptions"],
        "spec.securityContext",
    ));
    if pod["appArmorProfile"]["type"] == "Unconfined" {
        found.push("spec.securityContext.appArmorProfile is Unconfined".into());
    }

    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for container in items(&spec[list]) {
            let at = format!("{list}[{}]", container["name"].as_str().unwrap_or("?"));
            let context = &container["securityContext"];
            if context["privileged"] == true {
                found.push(format!("{at} is privileged"));
            }
            if context["allowPrivilegeEscalation"] != false {
                found.push(format!("{at} does not set allowPrivilegeEscalation: false"));
            }
            let drop = items(&context["capabilities"]["drop"]);
            if !drop.iter().any(|c| c == "ALL") {
                found.push(format!("{at} does not drop ALL capabilities"));
            }
            for added in items(&context["capabilities"]["add"]) {
                if added != "NET_BIND_SERVICE" {
                    found.push(format!("{at} adds capability {added:?}"));
                }
            }
            if context["runAsNonRoot"] == false
                || (!pod_non_root && context["runAsNonRoot"] != true)
            {
                found.push(format!("{at} may run as root (runAsNonRoot)"));
            }
            if context["runAsUser"] == 0 {
                found.push(format!("{at} runs as uid 0"));
            }
            let own = &context["seccompProfile"];
            if (!own.is_null() && !confined(own)) || (own.is_null() && !pod_seccomp) {
                found.push(format!(
                    "{at} has no RuntimeDefault or Localhost seccomp profile"
                ));
            }
            if !context["procMount"].is_null() && context["procMount"] != "Default" {
                found.push(format!("{at} has procMount {:?}", context["procMount"]));
            }
            found.extend(selinux_violations(&context["seLinuxOptions"], &at));
            if context["appArmorProfile"]["type"] == "Unconfined" {
                found.push(format!("{at} has an Unconfined AppArmor profile"));
            }
            if context["windowsOptions"]["hostProcess"] == true {
                found.push(format!("{at} is a Windows host process"));
            }
            for port in items(&container["ports"]) {
                if !port["hostPort"].is_null() && port["hostPort"] != 0 {
                    found.push(format!("{at} uses host port {:?}", port["hostPort"]));
                }
            }
        }
    }
    found
}

fn selinux_violations(options: &Yaml, at: &str) -> Vec<String> {
    let mut found = Vec::new();
    let allowed = [
        "container_t",
        "container_init_t",
        "container_kvm_t",
        "container_engine_t",
    ];
    if let Some(kind) = options["type"].as_str() {
        if !kind.is_empty() && !allowed.contains(&kind) {
            found.push(format!("{at}.seLinuxOptions.type is {kind}"));
        }
    }
    for field in ["user", "role"] {
        if options[field].as_str().is_some_and(|v| !v.is_empty()) {
            found.push(format!("{at}.seLinuxOptions.{field} is set"));
        }
    }
    found
}

fn assert_restricted(documents: &[Yaml], source: &str) {
    let pods = pod_templates(documents);
    assert!(!pods.is_empty(), "{source} has a pod template");
    for (name, metadata, spec) in pods {
        let violations = restricted_violations(metadata, spec);
        assert!(
            violations.is_empty(),
            "{source}: {name} breaks Pod Security \"restricted\":\n{}",
            violations.join("\n")
        );
    }
}

/// The paths a `jetrun.toml` gives for NATS authentication and TLS.
fn nats_auth_paths(toml: &str) -> Vec<String> {
    toml.lines()
        .map(str::trim)
        .filter(|line| ["creds", "nkey", "tls"].iter().any(|k| line.starts_with(k)))
        .flat_map(|line| {
            line.split('"')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What every rendering of the Kubernetes files must hold: the pods pass
/// Pod Security "restricted", the Secret is mounted where the config looks
/// for credentials, `/tmp` is writable, the ConfigMap is watched, the log
/// filter is jetrun's default, the disruption budget and the spreading
/// select the pods, the Service and the ServiceMonitor (when there is one)
/// find them, and `jetrun check` accepts the config.
fn assert_kubernetes_pieces_agree(documents: &[Yaml], source: &str) {
    assert_restricted(documents, source);
    let config_map = of_kind(documents, "ConfigMap");
    let deployment = of_kind(documents, "Deployment");
    let budget = of_kind(documents, "PodDisruptionBudget");
    let service = of_kind(documents, "Service");
    let pod = &deployment["spec"]["template"];
    let spec = &pod["spec"];
    let labels = &pod["metadata"]["labels"];
    let container = &spec["containers"][0];
    let volume = |name: &str| -> &Yaml {
        items(&spec["volumes"])
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{source}: no volume {name}"))
    };
    let mount = |path: &str| -> &Yaml {
        items(&container["volumeMounts"])
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{source}: nothing is mounted at {path}"))
    };

    assert_eq!(
        spec["automountServiceAccountToken"], false,
        "{source}: no API token in the pods"
    );
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
        "{source}"
    );
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"], true,
        "{source}"
    );

    // The config: `jetrun check` accepts it; it is mounted from the
    // ConfigMap and watched.
    let toml = config_map["data"]["jetrun.toml"]
        .as_str()
        .unwrap_or_else(|| panic!("{source}: the ConfigMap holds jetrun.toml"));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jetrun.toml");
    std::fs::write(&path, toml).expect("write jetrun.toml");
    let (code, stderr) = run_check(&path);
    assert_eq!(
        code, 0,
        "{source}: jetrun check rejects the ConfigMap's config:\n{stderr}"
    );
    assert!(
        toml.contains(r#"listen = "0.0.0.0:9600""#),
        "{source}: {toml}"
    );
    let config = mount("/etc/jetrun");
    assert_eq!(
        volume(config["name"].as_str().unwrap())["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    assert!(
        items(&container["args"]).iter().any(|a| a == "--watch"),
        "{source}: the pods run with --watch, so a ConfigMap update is applied"
    );

    // The credentials: a Secret mounted read-only where the config looks.
    let auth = mount(NATS_AUTH_MOUNT);
    assert_eq!(auth["readOnly"], true, "{source}");
    let secret = &volume(auth["name"].as_str().unwrap())["secret"];
    assert!(
        secret["secretName"].is_string(),
        "{source}: {NATS_AUTH_MOUNT} is a Secret"
    );
    let auth_paths = nats_auth_paths(toml);
    assert!(
        auth_paths.iter().any(|p| p.ends_with(".creds")),
        "{source}: the config reads a .creds file: {auth_paths:?}"
    );
    for path in &auth_paths {
        assert!(
            path.starts_with(&format!("{NATS_AUTH_MOUNT}/")),
            "{source}: {path} is not in the Secret mounted at {NATS_AUTH_MOUNT}"
        );
    }

    // Exec functions' scratch space.
    let tmp = mount("/tmp");
    assert!(
        volume(tmp["name"].as_str().unwrap())["emptyDir"].is_mapping(),
        "{source}: /tmp is an emptyDir"
    );
    assert_ne!(tmp["readOnly"], true, "{source}");

    let log = items(&container["env"])
        .iter()
        .find(|e| e["name"] == "JETRUN_LOG")
        .map(|e| e["value"].as_str().unwrap_or_default().to_string());
    let log = log.unwrap_or_else(|| panic!("{source}: JETRUN_LOG is set"));
    assert_eq!(
        log,
        default_log_filter(),
        "{source}: JETRUN_LOG is jetrun's default"
    );

    // Selection: the disruption budget, the spreading and the Service pick
    // the pods; the budget lets a drain proceed.
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"], *labels,
        "{source}"
    );
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"], *labels,
        "{source}"
    );
    assert!(
        budget["spec"]["maxUnavailable"]
            .as_u64()
            .is_some_and(|n| n >= 1)
            || budget["spec"]["minAvailable"]
                .as_u64()
                .is_some_and(|n| n < deployment["spec"]["replicas"].as_u64().unwrap_or(1)),
        "{source}: the PodDisruptionBudget lets one replica go at a time"
    );
    let spread = items(&spec["topologySpreadConstraints"]);
    assert!(
        spread
            .iter()
            .any(|c| c["topologyKey"] == "kubernetes.io/hostname"),
        "{source}: the replicas are spread over nodes"
    );
    for constraint in spread {
        assert_eq!(
            constraint["labelSelector"]["matchLabels"], *labels,
            "{source}"
        );
    }
    assert_eq!(service["spec"]["selector"], *labels, "{source}");
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        port["targetPort"], container["ports"][0]["name"],
        "{source}"
    );

    let monitors: Vec<&Yaml> = documents
        .iter()
        .filter(|d| d["kind"] == "ServiceMonitor")
        .collect();
    for monitor in &monitors {
        assert_service_monitor_finds(monitor, service, source);
        assert!(
            pod["metadata"]["annotations"]["prometheus.io/scrape"].is_null(),
            "{source}: with a ServiceMonitor, the pods' scrape annotations would scrape each replica twice"
        );
    }
}

fn assert_service_monitor_finds(monitor: &Yaml, service: &Yaml, source: &str) {
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("the ServiceMonitor selects by label");
    for (key, value) in selector {
        assert_eq!(
            service["metadata"]["labels"][key], *value,
            "{source}: the ServiceMonitor selects the Service"
        );
    }
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(
        endpoint["port"], service["spec"]["ports"][0]["name"],
        "{source}"
    );
    assert_eq!(endpoint["path"], "/metrics", "{source}");
}

#[test]
fn the_kubernetes_manifest_passes_pod_security_restricted_and_hangs_together() {
    let documents = manifest(KUBERNETES_BASE);
    assert_kubernetes_pieces_agree(&documents, KUBERNETES_BASE);

    let deployment = of_kind(&documents, "Deployment");
    let service = of_kind(&documents, "Service");
    let pod = &deployment["spec"]["template"];
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
    assert_eq!(
        container["args"],
        serde_yaml_ng::from_str::<Yaml>(r#"["run", "-c", "/etc/jetrun/jetrun.toml", "--watch"]"#)
            .unwrap()
    );
    assert_eq!(
        items(&container["env"])
            .iter()
            .find(|e| e["name"] == "JETRUN_LOG")
            .map(|e| &e["value"]),
        Some(&Yaml::from(default_log_filter())),
        "the manifest spells out the default log filter"
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

    let monitor = manifest("deploy/kubernetes/servicemonitor/servicemonitor.yaml");
    assert_service_monitor_finds(
        of_kind(&monitor, "ServiceMonitor"),
        service,
        "servicemonitor.yaml",
    );
}

/// The pod check is only worth something if it fails: break each rule of
/// the profile in a copy of the manifest's pod and see it named.
#[test]
fn the_pod_security_check_names_each_broken_rule() {
    let documents = manifest(KUBERNETES_BASE);
    let template = of_kind(&documents, "Deployment")["spec"]["template"].clone();
    assert!(restricted_violations(&template["metadata"], &template["spec"]).is_empty());
    let yaml = |text: &str| serde_yaml_ng::from_str::<Yaml>(text).unwrap();
    type Breach = (
        &'static str,
        &'static str,
        fn(&mut Yaml, &dyn Fn(&str) -> Yaml),
    );
    let breaches: &[Breach] = &[
        ("host network", "hostNetwork", |s, _| {
            s["hostNetwork"] = true.into()
        }),
        ("host PID", "hostPID", |s, _| s["hostPID"] = true.into()),
        ("host IPC", "hostIPC", |s, _| s["hostIPC"] = true.into()),
        ("a hostPath volume", "hostPath", |s, y| {
            s["volumes"]
                .as_sequence_mut()
                .unwrap()
                .push(y("{name: host, hostPath: {path: /}}"))
        }),
        ("an NFS volume", "nfs", |s, y| {
            s["volumes"]
                .as_sequence_mut()
                .unwrap()
                .push(y("{name: n, nfs: {server: x, path: /}}"))
        }),
        ("a host port", "host port", |s, _| {
            s["containers"][0]["ports"][0]["hostPort"] = 9600.into()
        }),
        ("privileged", "privileged", |s, _| {
            s["containers"][0]["securityContext"]["privileged"] = true.into()
        }),
        (
            "privilege escalation",
            "allowPrivilegeEscalation",
            |s, _| s["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = true.into(),
        ),
        ("capabilities kept", "drop ALL", |s, y| {
            s["containers"][0]["securityContext"]["capabilities"]["drop"] = y("[NET_RAW]")
        }),
        ("a capability added", "adds capability", |s, y| {
            s["containers"][0]["securityContext"]["capabilities"]["add"] = y("[NET_ADMIN]")
        }),
        ("runAsNonRoot missing", "runAsNonRoot", |s, _| {
            s["securityContext"]
                .as_mapping_mut()
                .unwrap()
                .remove("runAsNonRoot");
        }),
        (
            "runAsNonRoot false in the container",
            "runAsNonRoot",
            |s, _| s["containers"][0]["securityContext"]["runAsNonRoot"] = false.into(),
        ),
        ("uid 0", "uid 0", |s, _| {
            s["containers"][0]["securityContext"]["runAsUser"] = 0.into()
        }),
        ("no seccomp profile", "seccomp", |s, _| {
            s["securityContext"]
                .as_mapping_mut()
                .unwrap()
                .remove("seccompProfile");
        }),
        ("seccomp unconfined", "seccomp", |s, y| {
            s["securityContext"]["seccompProfile"] = y("{type: Unconfined}")
        }),
        ("an unsafe sysctl", "sysctl", |s, y| {
            s["securityContext"]["sysctls"] = y("[{name: kernel.msgmax, value: '1'}]")
        }),
        ("an unmasked /proc", "procMount", |s, _| {
            s["containers"][0]["securityContext"]["procMount"] = "Unmasked".into()
        }),
        ("an SELinux user", "seLinuxOptions.user", |s, y| {
            s["securityContext"]["seLinuxOptions"] = y("{user: system_u}")
        }),
        ("AppArmor unconfined", "AppArmor", |s, y| {
            s["containers"][0]["securityContext"]["appArmorProfile"] = y("{type: Unconfined}")
        }),
        (
            "an init container without a security context",
            "initContainers[setup]",
            |s, y| s["initContainers"] = y("[{name: setup, image: busybox}]"),
        ),
    ];
    for (what, named, breach) in breaches {
        let mut spec = template["spec"].clone();
        breach(&mut spec, &yaml);
        let violations = restricted_violations(&template["metadata"], &spec);
        assert!(
            violations.iter().any(|v| v.contains(named)),
            "{what}: expected a violation naming {named:?}, got {violations:?}"
        );
    }
    let mut metadata = template["metadata"].clone();
    metadata["annotations"]["container.apparmor.security.beta.kubernetes.io/jetrun"] =
        "unconfined".into();
    assert!(!restricted_violations(&metadata, &template["spec"]).is_empty());
}

/// `kubectl kustomize deploy/kubernetes/DIR`, parsed; `None` (SKIPPED)
/// without kubectl.
fn kustomize(dir: &str, test: &str) -> Option<Vec<Yaml>> {
    let kubectl = tool_or_skip(
        "kubectl",
        "KUBECTL_BIN",
        test,
        "install kubectl 1.21 or later (Kustomize 4 or later)",
    )?;
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(deploy_dir().join("kubernetes").join(dir))
        .output()
        .expect("run kubectl kustomize");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/kubernetes/{dir} failed ({}):\n{stderr}",
        output.status
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    Some(
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| Yaml::deserialize(d).expect("kubectl kustomize prints YAML"))
            .filter(|d| !d.is_null())
            .collect(),
    )
}

#[test]
fn the_kustomize_base_and_overlay_render_and_pass_pod_security_restricted() {
    let test = "the_kustomize_base_and_overlay_render_and_pass_pod_security_restricted";
    let Some(base) = kustomize("base", test) else {
        return;
    };
    // The base is the manifest as it stands.
    let mut raw = manifest(KUBERNETES_BASE);
    let mut rendered = base.clone();
    let by_name = |d: &Yaml| format!("{:?}/{:?}", d["kind"], d["metadata"]["name"]);
    raw.sort_by_key(by_name);
    rendered.sort_by_key(by_name);
    assert_eq!(
        rendered, raw,
        "kubectl kustomize deploy/kubernetes/base is {KUBERNETES_BASE}"
    );
    assert_kubernetes_pieces_agree(&base, "the Kustomize base");

    let overlay = kustomize("example", test).expect("kubectl was found just now");
    assert_kubernetes_pieces_agree(&overlay, "the example overlay");
    // Each setting of the overlay reaches the manifests.
    let deployment = of_kind(&overlay, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let spec = &deployment["spec"]["template"]["spec"];
    let resources = &spec["containers"][0]["resources"];
    assert_eq!(resources["limits"]["memory"], "512Mi");
    assert_eq!(resources["requests"]["cpu"], "250m");
    let secret = items(&spec["volumes"])
        .iter()
        .find(|v| v["name"] == "nats-auth")
        .unwrap();
    assert_eq!(secret["secret"]["secretName"], "orders-nats");
    assert_eq!(
        of_kind(&overlay, "ConfigMap")["data"]["jetrun.toml"].as_str(),
        Some(read(&deploy_dir().join("kubernetes/example/jetrun.toml")).as_str())
    );
    of_kind(&overlay, "ServiceMonitor");
}

/// Every manifest, raw and rendered, against the Kubernetes API's schema,
/// strictly (an unknown field is an error), with `kubernetes-validate`.
#[test]
fn kubernetes_validate_accepts_every_manifest() {
    let test = "kubernetes_validate_accepts_every_manifest";
    // Where `.ci/run` installs it, beside the nats-server from PyPI.
    let local = repo_root().join(".jetrun/tools/bin/kubernetes-validate");
    let found = if std::env::var_os("KUBERNETES_VALIDATE_BIN").is_none() && local.is_file() {
        Some(local)
    } else {
        tool_or_skip(
            "kubernetes-validate",
            "KUBERNETES_VALIDATE_BIN",
            test,
            "`pip install kubernetes-validate` (into .jetrun/tools, say)",
        )
    };
    let Some(validate) = found else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut files = vec![
        repo_root().join(KUBERNETES_BASE),
        repo_root().join("deploy/kubernetes/servicemonitor/servicemonitor.yaml"),
    ];
    for overlay in ["base", "example"] {
        if let Some(documents) = kustomize(overlay, test) {
            let path = dir.path().join(format!("{overlay}.yaml"));
            let text: Vec<String> = documents
                .iter()
                .map(|d| serde_yaml_ng::to_string(d).expect("YAML"))
                .collect();
            std::fs::write(&path, text.join("---\n")).expect("write the rendered manifests");
            files.push(path);
        }
    }
    for file in files {
        let output = Command::new(&validate)
            .arg("--strict")
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && !stdout.contains("ERROR"),
            "kubernetes-validate --strict {} ({}):\n{stdout}{}",
            file.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        // Only the ServiceMonitor (a Prometheus Operator CRD) has no schema
        // kubernetes-validate knows: every other kind is checked.
        for line in stdout
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
        {
            assert!(
                line.contains("ServiceMonitor"),
                "kubernetes-validate has no schema for {}: {line}",
                file.display()
            );
            println!("SKIPPED: the ServiceMonitor's schema (a CRD): {line}");
        }
        if !file.ends_with("servicemonitor.yaml") {
            assert!(
                stdout.contains("passed for resource deployment/jetrun"),
                "kubernetes-validate checked the Deployment in {}:\n{stdout}",
                file.display()
            );
        }
    }
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
    let verify = |unit: &Path, what: &str| {
        let output = Command::new(&analyze)
            .arg("verify")
            .arg(unit)
            .output()
            .expect("run systemd-analyze verify");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {what} ({}):\n{stderr}",
            output.status
        );
    };
    verify(&copy, "deploy/systemd/jetrun.service");
    // The unit as its comment says to change it for credentials.
    let with_credential = dir.path().join("with-credential").join("jetrun.service");
    std::fs::create_dir(with_credential.parent().unwrap()).expect("mkdir");
    let load = load_credential_line(&unit);
    std::fs::write(
        &with_credential,
        read(&copy).replace("\n[Service]\n", &format!("\n[Service]\n{load}\n")),
    )
    .expect("write the unit");
    verify(&with_credential, "the unit with its LoadCredential= line");
}

/// The `LoadCredential=` line the unit's comment documents.
fn load_credential_line(unit: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix("#   LoadCredential="))
        .map(|rest| format!("LoadCredential={rest}"))
        .expect("the unit documents LoadCredential=")
}

/// With `LoadCredential=jetrun.creds:...`, the config that the unit's
/// comment and deploy/README.md give reads the copy in
/// `$CREDENTIALS_DIRECTORY`; `jetrun check` resolves it there.
#[test]
fn the_systemd_credentials_config_reads_the_credentials_directory() {
    let unit = read(&deploy_dir().join("systemd/jetrun.service"));
    let load = load_credential_line(&unit);
    let (id, source) = load
        .strip_prefix("LoadCredential=")
        .and_then(|l| l.split_once(':'))
        .expect("LoadCredential=ID:PATH");
    assert!(source.starts_with('/'), "{source} is absolute");
    let creds_line = format!("creds = \"${{CREDENTIALS_DIRECTORY}}/{id}\"");
    assert!(
        unit.contains(&format!("#   {creds_line}")),
        "the unit shows {creds_line}"
    );
    let readme = read(&deploy_dir().join("README.md"));
    assert!(
        readme.contains(&format!("\n{load}\n")),
        "deploy/README.md shows {load}"
    );
    assert!(
        readme.contains(&format!("\n{creds_line}\n")),
        "deploy/README.md shows {creds_line}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("jetrun.toml");
    std::fs::write(
        &config,
        format!(
            "[nats]\n{creds_line}\n[streams.S]\nsubjects = [\"a.>\"]\n\
             [functions.f]\nsubjects = [\"a.b\"]\nbuiltin = \"noop\"\n"
        ),
    )
    .expect("write jetrun.toml");
    let config = config.to_string_lossy();
    let credentials = dir.path().to_string_lossy();
    let (code, _, stderr) = run_command_with_env(
        &["check", "-c", &config],
        &[("CREDENTIALS_DIRECTORY", &credentials)],
    );
    assert_eq!(code, 0, "{stderr}");
    // Without the variable (outside the unit) the config says what is missing.
    let (code, _, stderr) = run_command(&["check", "-c", &config]);
    assert_ne!(code, 0);
    assert!(stderr.contains("CREDENTIALS_DIRECTORY"), "{stderr}");
}

/// README.md, the unit, the Dockerfile and the manifest give the log filter
/// the runner uses when `JETRUN_LOG` is unset.
#[test]
fn every_deploy_file_spells_out_the_default_log_filter() {
    let default = default_log_filter();
    let readme = read(&repo_root().join("README.md"));
    let (_, after) = readme
        .split_once("`JETRUN_LOG` takes a `tracing` filter (default")
        .expect("README.md documents JETRUN_LOG's default");
    let documented = after.split('`').nth(1).expect("the default in backquotes");
    assert_eq!(documented, default, "README.md's default is the runner's");
    let unit = read(&deploy_dir().join("systemd/jetrun.service"));
    assert!(
        unit.lines()
            .any(|l| l == format!("Environment=JETRUN_LOG={default}")),
        "deploy/systemd/jetrun.service sets JETRUN_LOG={default}"
    );
    let dockerfile = read(&deploy_dir().join("Dockerfile"));
    assert!(
        dockerfile
            .lines()
            .any(|l| l == format!("ENV JETRUN_LOG={default}")),
        "deploy/Dockerfile sets JETRUN_LOG={default}"
    );
    let readme = read(&deploy_dir().join("README.md"));
    assert!(
        readme.contains(&format!("(`{default}`)")),
        "deploy/README.md names {default}"
    );
}

/// `deploy/check-dockerfile.sh` takes its build command from the
/// Dockerfile; what it reads must be there in the shape it expects.
#[test]
fn the_dockerfile_has_the_build_step_check_dockerfile_runs() {
    let dockerfile = read(&deploy_dir().join("Dockerfile"));
    let build = dockerfile
        .split("\nFROM ")
        .nth(1)
        .expect("a build stage after the comments");
    assert!(build.contains("\nWORKDIR /src\n") && build.contains("\nCOPY . .\n"));
    assert_eq!(
        build.matches("\nRUN ").count(),
        1,
        "one RUN in the build stage"
    );
    assert!(build.contains("cargo build --release --locked -p jetrun"));
    assert!(build.contains("install -m 0755 target/release/jetrun /usr/local/bin/jetrun"));
    let script = deploy_dir().join("check-dockerfile.sh");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&script)
            .expect("deploy/check-dockerfile.sh")
            .permissions(),
    );
    assert!(
        mode & 0o111 != 0,
        "deploy/check-dockerfile.sh is executable"
    );
    let output = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("run bash -n");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The kubelet updates a mounted ConfigMap by writing a new folder and
/// swapping the `..data` link to it; `jetrun.toml` is a link through
/// `..data`. The manifests rely on `jetrun run --watch` seeing that swap,
/// even when the file keeps its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reloads_a_config_map_updated_the_way_the_kubelet_does() {
    let bed = TestBed::new();
    let mount = bed.path("etc-jetrun");
    std::fs::create_dir(&mount).expect("mkdir");
    let function = |name: &str| {
        format!("\n[functions.{name}]\nsubjects = [\"ev.{name}\"]\nbuiltin = \"noop\"\n")
    };
    // Writes the config into a new timestamped folder and swaps ..data to it
    // with a rename, as the kubelet's atomic writer does; the old folder goes.
    let publish = |version: usize, toml: &str| {
        let folder = format!("..2026_12_05_00_00_0{version}.000000001");
        std::fs::create_dir(mount.join(&folder)).expect("mkdir");
        std::fs::write(mount.join(&folder).join("jetrun.toml"), toml).expect("write");
        std::os::unix::fs::symlink(&folder, mount.join("..data_tmp")).expect("symlink");
        std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("swap ..data");
        if version > 1 {
            let old = format!("..2026_12_05_00_00_0{}.000000001", version - 1);
            std::fs::remove_dir_all(mount.join(old)).expect("remove the old folder");
        }
    };
    let base = bed.base_config();
    publish(1, &format!("{base}{}", function("alpha")));
    std::os::unix::fs::symlink("..data/jetrun.toml", mount.join("jetrun.toml")).expect("symlink");

    let runner = Runner::start_with(&mount.join("jetrun.toml"), &["--watch"], &[]);
    let js = bed.jetstream().await;
    wait_for_consumer(&js, TestBed::STREAM, "alpha").await;
    let reloads = |result: &'static str| {
        let addr = bed.metrics;
        async move {
            let text = scrape(addr).await;
            metric(&text, "jetrun_config_reloads_total", &[("result", result)]).unwrap_or(0.0)
        }
    };

    // The same size: only the folder behind ..data, and so the file's
    // modification time, tells the change.
    publish(2, &format!("{base}{}", function("bravo")));
    wait_for_consumer(&js, TestBed::STREAM, "bravo").await;
    // The consumer is bound before the reload is counted.
    wait_until(Duration::from_secs(10), "one reload counted", || async {
        reloads("success").await == 1.0
    })
    .await;
    assert_eq!(reloads("success").await, 1.0, "{}", runner.log());

    publish(
        3,
        &format!("{base}{}{}", function("bravo"), function("charlie")),
    );
    wait_for_consumer(&js, TestBed::STREAM, "charlie").await;
    wait_until(Duration::from_secs(10), "two reloads counted", || async {
        reloads("success").await == 2.0
    })
    .await;
    assert_eq!(reloads("failure").await, 0.0, "{}", runner.log());
}
