//! `config/jetrun.schema.json`, the config file's JSON Schema for editors: it
//! is current with `src/schema.rs`, it accepts the configs this repository
//! ships (and `jetrun init` writes), and it refuses, like the parser, a key
//! no table knows and a value of the wrong type or shape. Where the two are
//! compared, each case goes through both: the parser and a JSON Schema
//! validator (draft-07) over the TOML turned into JSON.
//!
//! After changing `src/schema.rs`, regenerate the file with
//!
//! ```text
//! JETRUN_UPDATE_SCHEMA=1 cargo test -p jetrun-config --test schema
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jetrun_functions::BUILTINS;
use serde_json::Value;

const UPDATE: &str = "JETRUN_UPDATE_SCHEMA=1 cargo test -p jetrun-config --test schema";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The schema as generated now.
fn schema() -> Value {
    serde_json::from_str(&jetrun_config::json_schema()).expect("the schema is JSON")
}

/// The schema compiled by a validator, checked against the draft-07 meta-schema.
struct Validator {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Validator {
    fn errors(&self, instance: &Value) -> Vec<String> {
        match self.schemas.validate(instance, self.index) {
            Ok(()) => Vec::new(),
            Err(error) => format!("{error:#}").lines().map(str::to_owned).collect(),
        }
    }
}

fn validator() -> Validator {
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("jetrun.schema.json", schema())
        .expect("the schema loads");
    let index = compiler
        .compile("jetrun.schema.json", &mut schemas)
        .unwrap_or_else(|e| panic!("the schema does not compile: {e:#}"));
    Validator { schemas, index }
}

/// The schema's errors for a TOML document, as `path: message` lines.
fn schema_errors(validator: &Validator, text: &str) -> Vec<String> {
    let table: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let json = serde_json::to_value(table).expect("TOML values are JSON values");
    validator.errors(&json)
}

fn env() -> BTreeMap<String, String> {
    [
        ("KEY", "s3cret"),
        ("MODE", "worker"),
        ("OTLP", "http://127.0.0.1:4318"),
        ("PORT", "9700"),
        ("STORAGE", "memory"),
        ("TIMEOUT", "5s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The parser's errors for a TOML document (none when it is valid).
fn parser_errors(text: &str) -> Vec<String> {
    match jetrun_config::parse(text, &env(), Path::new("/srv/jetrun"), BUILTINS) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_committed_schema_is_current() {
    let path = crate_dir().join("jetrun.schema.json");
    let schema = jetrun_config::json_schema();
    if std::env::var_os("JETRUN_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &schema)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == schema,
        "{} is not current with src/schema.rs; regenerate it with\n    {UPDATE}",
        path.display()
    );
}

#[test]
fn the_schema_is_a_valid_draft_07_schema() {
    let schema = schema();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    // Compiling checks a schema against the meta-schema its $schema names:
    // ours passes, and one that is not a schema does not.
    validator();
    let mut broken = schema.clone();
    broken["properties"]["functions"]["type"] = 5.into();
    let mut compiler = boon::Compiler::new();
    compiler.add_resource("broken.json", broken).unwrap();
    assert!(compiler
        .compile("broken.json", &mut boon::Schemas::new())
        .is_err());
}

/// `config/jetrun.toml`, every `config/examples/*.toml` and the template of
/// `jetrun init` (read from its source, `runner/src/cli/init.rs`).
fn shipped_configs() -> Vec<(String, String)> {
    let dir = crate_dir();
    let mut files = vec![dir.join("jetrun.toml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(dir.join("examples"))
        .expect("config/examples")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    examples.sort();
    files.extend(examples);
    let mut configs: Vec<(String, String)> = files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (path.display().to_string(), text)
        })
        .collect();

    let init = dir.join("../runner/src/cli/init.rs");
    let source = std::fs::read_to_string(&init)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", init.display()));
    const START: &str = "const TEMPLATE: &str = r#\"";
    let template = source
        .split_once(START)
        .and_then(|(_, rest)| rest.split_once("\"#;"))
        .map(|(template, _)| template.to_owned())
        .unwrap_or_else(|| panic!("no `{START}...\"#;` in {}", init.display()));
    configs.push((format!("the template of {}", init.display()), template));
    configs
}

#[test]
fn the_shipped_configs_are_valid() {
    let validator = validator();
    let configs = shipped_configs();
    assert!(configs.len() >= 7, "{configs:?}");
    for (name, text) in configs {
        assert_eq!(parser_errors(&text), Vec::<String>::new(), "{name}");
        assert_eq!(
            schema_errors(&validator, &text),
            Vec::<String>::new(),
            "{name}"
        );
    }
}

/// A valid base every case below adds to or changes.
const BASE: &str = r#"
[streams.ORDERS]
subjects = ["order.>"]
"#;

/// `BASE` and one function `f` with `keys`.
fn function(keys: &str) -> String {
    format!("{BASE}\n[functions.f]\n{keys}\n")
}

/// Valid files, the forms the parser accepts that a schema could easily miss.
fn accepted() -> Vec<String> {
    let handler = "subjects = [\"order.placed\"]";
    let mut cases: Vec<String> = [
        "builtin = \"noop\"",
        "exec = [\"python3\", \"handler.py\"]",
        "exec = { command = [\"./handler\"], mode = \"worker\", workers = 2, env = { A = \"1\" } }",
        "exec = { command = [\"./handler\"], user = 65534, group = \"nogroup\" }",
        "exec = { command = [\"./handler\"], user = \"1000\" }",
        "exec = { command = [\"./handler\"], mode = \"${MODE}\" }",
        "http = \"http://127.0.0.1:8080/events\"",
        "http = { url = \"https://fn.internal/x\", headers = { X-Key = \"k\" }, timeout = \"5s\" }",
    ]
    .into_iter()
    .map(|h| function(&format!("{handler}\n{h}")))
    .collect();
    cases.extend(
        [
            "timeout = \"1h 30m\"",
            "timeout = \"1.5s\"",
            "timeout = \"${TIMEOUT}\"",
            "timeout = \"250 ms\"",
            "ack_wait = \"2min\"",
            "concurrency = 1\nmax_ack_pending = 1",
            "retry = { max_attempts = 1, initial_delay = \"0s\", multiplier = 1, max_delay = \"0s\", jitter = 0 }",
            "retry = { multiplier = 1.5, jitter = 1.0 }",
            "emits = [\"inventory.>\", \"order.*.placed\", \">\"]",
            "dead_letter = \"dlq.orders.f\"",
            "json = true",
            "projection = { bucket = \"by_user\", key = \"user_id\" }",
            "key = \"/account_id\"",
            "key = \"/\"",
            "key = \"/a~0b~1c/0\"",
            "key = \"subject:2\"\non_dead_letter = \"park\"\nmissing_key = \"unordered\"\npartitions = 64",
            "key = \"/id\"\non_dead_letter = \"continue\"\nmissing_key = \"dead_letter\"\npartitions = 1",
            "batch = { size = 100 }",
            "batch = { size = 10000, wait = \"1s\" }\nkey = \"subject:1\"",
            "rate = \"200/s\"",
            "rate = \"600/m\"",
            "rate = \"0060/m\"",
        ]
        .into_iter()
        .map(|keys| function(&format!("{handler}\nbuiltin = \"noop\"\n{keys}"))),
    );
    cases.extend([
        function("request = \"cmd.order.*\"\nbuiltin = \"noop\""),
        function("request = \"query.orders\"\nbuiltin = \"noop\"\nprojection = { bucket = \"b\", key = \"/id\" }"),
        format!(
            "shutdown_timeout = \"10s\"\n[nats]\nurl = [\"nats://a:4222\", \"nats://b:4222\"]\n\
             user = \"u\"\npassword = \"\"\ntls = {{ ca = \"ca.pem\", cert = \"c.pem\", key = \"k.pem\" }}\n\
             [metrics]\nlisten = \":${{PORT}}\"\n[defaults]\nconcurrency = 4\ntimeout = \"5s\"\n\
             ack_wait = \"1m\"\nmax_ack_pending = 100\nretry = {{ max_attempts = 3 }}\n{}",
            function("subjects = [\"order.placed\"]\nbuiltin = \"noop\"")
        ),
        format!(
            "[nats]\nurl = \"nats://${{STORAGE}}:4222\"\ncreds = \"a.creds\"\n{}",
            function("subjects = [\"order.placed\"]\nbuiltin = \"noop\"")
        ),
        format!(
            "[metrics]\nlisten = \"localhost:9600\"\n[streams.EVENTS]\nsubjects = [\"ev.>\"]\n\
             storage = \"${{STORAGE}}\"\nreplicas = 5\nmax_age = \"30d\"\nduplicate_window = \"2m\"\n\
             retention = \"workqueue\"\n{}",
            function("subjects = [\"order.placed\"]\nbuiltin = \"noop\"")
        ),
    ]);
    for listen in ["[::]:9600", "0.0.0.0:9600", ":9600", "LOCALHOST:1"] {
        cases.push(format!(
            "[metrics]\nlisten = \"{listen}\"\n{}",
            function("subjects = [\"order.placed\"]\nbuiltin = \"noop\"")
        ));
    }
    cases.push(format!(
        "{}\n[aggregates.order]\nstream = \"ORDERS\"\nsubject = \"order.{{id}}\"\nid = \"order_id\"\n\
         snapshot_every = 10\nmax_conflict_retries = 0\n",
        function("request = \"cmd.order.place\"\nbuiltin = \"noop\"\naggregate = \"order\"")
    ));
    cases.push(format!(
        "{}\n[sagas.s]\nstart = \"order.placed\"\nkey = \"/id\"\ntimeout = \"10m\"\n\
         completed = \"order.done\"\nfailed = \"order.failed\"\nretention = \"1d\"\n\
         retry = {{ max_attempts = 2 }}\n\
         [[sagas.s.steps]]\nname = \"pay\"\ncommand = \"order.pay\"\n\
         success = [\"order.paid\", \"order.paid-late\"]\nfailure = \"order.declined\"\n\
         compensate = \"order.refund\"\ncompensated = \"order.refunded\"\ntimeout = \"5s\"\n",
        function("subjects = [\"order.placed\"]\nbuiltin = \"noop\"")
    ));
    for telemetry in [
        "otlp_endpoint = \"http://127.0.0.1:4318\"",
        "otlp_endpoint = \"https://otel.example/v1/traces\"\nservice_name = \"orders\"\n\
         sampling_ratio = 0.5\nheaders = { x-api-key = \"${KEY}\" }",
        "otlp_endpoint = \"${OTLP}\"\nsampling_ratio = 0",
    ] {
        cases.push(format!(
            "[telemetry]\n{telemetry}\n{}",
            function("subjects = [\"order.placed\"]\nbuiltin = \"noop\"")
        ));
    }
    cases
}

#[test]
fn what_the_parser_accepts_the_schema_accepts() {
    let validator = validator();
    for text in accepted() {
        assert_eq!(parser_errors(&text), Vec::<String>::new(), "{text}");
        assert_eq!(
            schema_errors(&validator, &text),
            Vec::<String>::new(),
            "{text}"
        );
    }
}

/// Files the parser refuses for an unknown key, a wrong type or a wrong
/// shape, each with a word of the parser's error.
fn refused() -> Vec<(String, &'static str)> {
    let f = |keys: &str| {
        function(&format!(
            "subjects = [\"order.placed\"]\nbuiltin = \"noop\"\n{keys}"
        ))
    };
    vec![
        // Unknown keys, in each kind of table.
        (f("retyr = { max_attempts = 3 }"), "is not a known key"),
        (format!("colour = \"blue\"\n{}", f("")), "is not a known key"),
        (f("retry = { attempts = 3 }"), "is not a known key"),
        (format!("[nats]\nservers = [\"nats://a\"]\n{}", f("")), "is not a known key"),
        (format!("[nats]\ntls = {{ ca = \"a\", crt = \"b\" }}\n{}", f("")), "is not a known key"),
        (format!("[metrics]\nport = 9600\n{}", f("")), "is not a known key"),
        (format!("[telemetry]\notlp_endpoint = \"http://c:4318\"\nexporter = \"otlp\"\n{}", f("")), "is not a known key"),
        (format!("[telemetry]\nservice_name = \"x\"\n{}", f("")), "is required"),
        (format!("[telemetry]\notlp_endpoint = \"127.0.0.1:4317\"\n{}", f("")), "must be an http:// or https:// URL"),
        (format!("[telemetry]\notlp_endpoint = \"http://c\"\nsampling_ratio = 2\n{}", f("")), "must be from 0 to 1"),
        (format!("[telemetry]\notlp_endpoint = \"http://c\"\nheaders = {{ \"a b\" = \"1\" }}\n{}", f("")), "not an HTTP header name"),
        (format!("[defaults]\njson = true\n{}", f("")), "is not a known key"),
        (format!("{BASE}replica = 3\n[functions.f]\nsubjects = [\"order.x\"]\nbuiltin = \"noop\"\n"), "is not a known key"),
        (function("subjects = [\"order.placed\"]\nexec = { command = [\"x\"], workerz = 2 }"), "is not a known key"),
        (function("subjects = [\"order.placed\"]\nhttp = { url = \"http://a\", method = \"PUT\" }"), "is not a known key"),
        (f("projection = { bucket = \"b\", key = \"k\", ttl = \"1d\" }"), "is not a known key"),
        (f("batch = { size = 10, max_wait = \"1s\" }"), "is not a known key"),
        (format!("[defaults]\nkey = \"/id\"\n{}", f("")), "is not a [defaults] key"),
        (format!("[defaults]\nbatch = {{ size = 10 }}\n{}", f("")), "is not a [defaults] key"),
        (format!("[defaults]\nrate = \"1/s\"\n{}", f("")), "is not a [defaults] key"),
        (
            format!("{}\n[sagas.s]\nstart = \"order.a\"\nkey = \"id\"\ncompleted = \"order.b\"\nfailed = \"order.c\"\n\
                     [[sagas.s.steps]]\nname = \"x\"\ncommand = \"order.d\"\nsuccess = \"order.e\"\nundo = \"order.f\"\n", f("")),
            "is not a known key",
        ),
        // Wrong types.
        (f("concurrency = \"4\""), "must be a positive integer"),
        (f("concurrency = 0"), "must be a positive integer"),
        (f("timeout = 30"), "must be a duration"),
        (f("timeout = \"five seconds\""), "must be a duration"),
        (f("timeout = \"30\""), "must be a duration"),
        (f("json = \"yes\""), "must be true or false"),
        (f("key = \"\""), "is the whole data, not a key"),
        (f("key = \"account_id\""), "must be a JSON pointer"),
        (f("key = \"/a~2\""), "is not a JSON pointer"),
        (f("key = \"subject:0\""), "must be \"subject:N\""),
        (f("key = \"subject:x\""), "must be \"subject:N\""),
        (f("key = 1"), "must be a JSON pointer"),
        (f("key = \"/id\"\non_dead_letter = \"skip\""), "must be \"continue\" or \"park\""),
        (f("key = \"/id\"\nmissing_key = \"drop\""), "must be \"dead_letter\" or \"unordered\""),
        (f("key = \"/id\"\npartitions = 0"), "must be an integer from 1 to 64"),
        (f("key = \"/id\"\npartitions = 65"), "must be an integer from 1 to 64"),
        (f("batch = 100"), "must be a table"),
        (f("batch = { size = 0 }"), "must be an integer from 1 to 10000"),
        (f("batch = { size = 10001 }"), "must be an integer from 1 to 10000"),
        (f("batch = { wait = \"1s\" }"), "is required"),
        (f("batch = { size = 1, wait = \"soon\" }"), "must be a duration"),
        (f("rate = \"0/s\""), "must be \"N/s\" or \"N/m\""),
        (f("rate = \"abc\""), "must be \"N/s\" or \"N/m\""),
        (f("rate = \"5/h\""), "must be \"N/s\" or \"N/m\""),
        (f("rate = \"1.5/s\""), "must be \"N/s\" or \"N/m\""),
        (f("rate = 200"), "must be \"N/s\" or \"N/m\""),
        (f("retry = { max_attempts = 0 }"), "must be at least 1"),
        (f("retry = { jitter = 1.5 }"), "must be between 0.0 and 1.0"),
        (f("retry = { multiplier = 0.5 }"), "must be at least 1.0"),
        (f("retry = 3"), "must be a table"),
        (f("emits = \"inventory.>\""), "must be a non-empty list of subjects"),
        (f("emits = []"), "must be a non-empty list of subjects"),
        (f("emits = [\"a..b\"]"), "is not a valid subject"),
        (f("dead_letter = \"dlq.*\""), "is not a valid subject"),
        (function("subjects = \"order.placed\"\nbuiltin = \"noop\""), "must be a non-empty list of subjects"),
        (function("subjects = [\"order.placed\"]\nexec = \"./handler\""), "must be an argv list"),
        (function("subjects = [\"order.placed\"]\nexec = []"), "must be an argv list"),
        (function("subjects = [\"order.placed\"]\nexec = { command = [\"x\"], mode = \"workers\" }"), "must be \"per-event\" or \"worker\""),
        (function("subjects = [\"order.placed\"]\nexec = { command = [\"x\"], user = -1 }"), "must be a user name or a numeric id"),
        (function("subjects = [\"order.placed\"]\nhttp = \"ftp://a\""), "must be a URL starting with http"),
        (format!("{BASE}storage = \"disk\"\n[functions.f]\nsubjects = [\"order.x\"]\nbuiltin = \"noop\"\n"), "must be \"file\" or \"memory\""),
        (format!("{BASE}replicas = 6\n[functions.f]\nsubjects = [\"order.x\"]\nbuiltin = \"noop\"\n"), "must be an integer from 1 to 5"),
        (format!("[metrics]\nlisten = \"example.com:9600\"\n{}", f("")), "must be an address and port"),
        (format!("[metrics]\nlisten = 9600\n{}", f("")), "must be an address and port"),
        (format!("[nats]\nurl = 4222\n{}", f("")), "must be a server URL"),
        (format!("[nats]\nurl = []\n{}", f("")), "must be a server URL"),
        (format!("shutdown_timeout = \"soon\"\n{}", f("")), "must be a duration"),
        // Shapes across keys.
        (function("subjects = [\"order.placed\"]"), "must have exactly one of builtin, exec, http"),
        (f("http = \"http://a\""), "must have exactly one of builtin, exec, http"),
        (function("builtin = \"noop\""), "is required"),
        (f("request = \"cmd.x\""), "not both"),
        (function("request = \"cmd.x\"\nbuiltin = \"noop\"\nemits = [\"a\"]"), "has no meaning for a request function"),
        (function("request = \"cmd.x\"\nbuiltin = \"noop\"\nkey = \"/id\""), "has no meaning for a request function"),
        (function("request = \"cmd.x\"\nbuiltin = \"noop\"\nbatch = { size = 2 }"), "has no meaning for a request function"),
        (function("request = \"cmd.x\"\nbuiltin = \"noop\"\nrate = \"2/s\""), "has no meaning for a request function"),
        (f("partitions = 2"), "has no meaning without key"),
        (f("on_dead_letter = \"park\""), "has no meaning without key"),
        (f("missing_key = \"unordered\""), "has no meaning without key"),
        (f("projection = { bucket = \"b\", key = \"/id\" }\nbatch = { size = 2 }"), "has no meaning for a projection"),
        (function("subjects = [\"order.placed\"]\nexec = { command = [\"x\"], workers = 2 }"), "only applies with mode = \"worker\""),
        (function("subjects = [\"order.placed\"]\nexec = { command = [\"x\"], group = \"g\" }"), "only applies with user"),
        (format!("[nats]\nuser = \"u\"\n{}", f("")), "is set without nats.password"),
        (format!("[nats]\ncreds = \"a\"\ntoken = \"t\"\n{}", f("")), "must use at most one of"),
        (format!("[nats]\ntls = {{ cert = \"c\" }}\n{}", f("")), "is set without nats.tls.key"),
        (BASE.to_owned(), "must declare at least one function"),
        (format!("{BASE}[functions]\n"), "must declare at least one function"),
        (function("subjects = [\"order.placed\"]\nbuiltin = \"noop\"").replace("functions.f", "functions.\"f.g\""), "is not a valid function name"),
        (format!("[streams.DLQ]\nsubjects = [\"x.>\"]\n{}", f("")), "is reserved"),
        (
            format!("{}\n[sagas.s]\nstart = \"order.a\"\nkey = \"id\"\ncompleted = \"order.b\"\nfailed = \"order.c\"\n\
                     [[sagas.s.steps]]\nname = \"x\"\ncommand = \"order.d\"\nsuccess = \"order.e\"\ncompensated = \"order.f\"\n", f("")),
            "has no meaning without compensate",
        ),
        (
            format!("{}\n[sagas.s]\nstart = \"order.a\"\nkey = \"id\"\ncompleted = \"order.b\"\nfailed = \"order.c\"\nsteps = []\n", f("")),
            "must be a non-empty list of steps",
        ),
        (
            format!("{}\n[sagas.s]\nstart = \"order.a\"\nkey = \"id\"\ncompleted = \"order.b\"\nfailed = \"order.c\"\n\
                     [[sagas.s.steps]]\nname = \"x\"\ncommand = \"order.d\"\n", f("")),
            "is required",
        ),
        (
            format!("{}\n[aggregates.order]\nstream = \"ORDERS\"\nsubject = \"order\"\nid = \"id\"\n", f("")),
            "one {id} token",
        ),
    ]
}

#[test]
fn what_the_parser_refuses_for_its_keys_types_or_shape_the_schema_refuses() {
    let validator = validator();
    for (text, why) in refused() {
        let parser = parser_errors(&text);
        assert!(
            parser.iter().any(|e| e.contains(why)),
            "the parser should refuse this with {why:?}, got {parser:?}:\n{text}"
        );
        assert!(
            !schema_errors(&validator, &text).is_empty(),
            "the schema accepts what the parser refuses ({parser:?}):\n{text}"
        );
    }
}

/// The schema's duration pattern accepts what humantime parses, and only that.
#[test]
fn durations_are_humantime_durations() {
    let validator = validator();
    let samples = [
        "0s",
        "30s",
        "250ms",
        "5m",
        "7d",
        "1h 30m",
        "1h30m",
        "1.5h",
        "2 min",
        "10 0s",
        " 3s ",
        "1M",
        "1y",
        "3µs",
        "5 nsec",
        "2weeks",
        "",
        "s",
        "30",
        "1.s",
        "1. 5s",
        "five seconds",
        "5 m s",
        "5sec5",
        "-5s",
        "1h,30m",
        "3mo",
        "1S",
        "5ks",
        "1.5.5s",
        "1_000s",
    ];
    for sample in samples {
        let text = function(&format!(
            "subjects = [\"order.placed\"]\nbuiltin = \"noop\"\nretry = {{ initial_delay = {sample:?}, max_delay = \"1000y\" }}"
        ));
        let humantime = humantime::parse_duration(sample).is_ok();
        let schema = schema_errors(&validator, &text).is_empty();
        assert_eq!(
            schema, humantime,
            "{sample:?}: humantime {humantime}, the schema {schema}"
        );
    }
}

/// The schema's subject patterns accept what the parser does, and only that.
#[test]
fn subjects_are_nats_subjects() {
    let validator = validator();
    let samples = [
        "a",
        "a.b",
        "a.*",
        "a.>",
        ">",
        "*",
        "*.b.>",
        "a-b_c.D9",
        "ünï.côdé",
        "a..b",
        ".a",
        "a.",
        "a.>.b",
        "a*",
        "a.b>",
        "a b",
        "a\tb",
        "",
        "a.**",
    ];
    for sample in samples {
        // emits: wildcards allowed; dead_letter: none, and it must be under dlq.>.
        for (key, value, wildcards) in [
            ("emits", format!("[{sample:?}]"), true),
            (
                "dead_letter",
                format!("{:?}", format!("dlq.{sample}")),
                false,
            ),
        ] {
            if !wildcards && sample.is_empty() {
                continue;
            }
            let text = function(&format!(
                "subjects = [\"order.placed\"]\nbuiltin = \"noop\"\n{key} = {value}"
            ));
            let parser = parser_errors(&text).is_empty();
            let schema = schema_errors(&validator, &text).is_empty();
            assert_eq!(
                schema, parser,
                "{key} = {value}: the parser {parser}, the schema {schema}"
            );
        }
    }
}
