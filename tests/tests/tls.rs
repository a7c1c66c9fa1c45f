//! TLS to NATS with a private CA and a client certificate (`tls = { ca,
//! cert, key }`, paths relative to the config file), against a nats-server
//! that verifies client certificates. The certificates are made by the test
//! with `openssl`.

use std::path::Path;
use std::process::Command;

use jetrun_e2e::{toml_str, wait_ready, NatsServer, Runner, TestBed};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (it ships with the machine image; apt-get install openssl)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=jetrun test CA",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ],
    );
    // Version 3 certificates (extensions make them so): rustls refuses v1.
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        let key = format!("{name}-key.pem");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        let subject = format!("/CN=jetrun test {name}");
        openssl(
            dir,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject, "-keyout", &key, "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &pem,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    let certs = tempfile::tempdir().expect("temp dir");
    make_certificates(certs.path());
    let file = |name: &str| toml_str(certs.path().join(name).to_string_lossy());
    let bed = TestBed::with_nats(NatsServer::start_with_config(&format!(
        "tls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: true }}",
        file("server.pem"),
        file("server-key.pem"),
        file("ca.pem")
    )));
    for name in ["ca.pem", "client.pem", "client-key.pem"] {
        std::fs::copy(certs.path().join(name), bed.path(name)).expect("copy certificate");
    }
    let url_line = format!("url = {}\n", toml_str(bed.nats.url()));
    let base = bed.base_config().replace(
        &url_line,
        &format!(
            "{url_line}tls = {{ ca = \"ca.pem\", cert = \"client.pem\", key = \"client-key.pem\" }}\n"
        ),
    );
    let config = bed.write_config(&format!(
        "{base}\n[functions.hello]\nsubjects = [\"ev.ok\"]\nbuiltin = \"noop\"\n"
    ));
    let runner = Runner::start(&config);
    let metrics = bed.metrics;
    wait_ready(metrics).await;
    assert!(
        runner.log().contains("Connected to NATS"),
        "{}",
        runner.log()
    );
}
