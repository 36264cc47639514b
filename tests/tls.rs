//! TLS through the binary: nodes serving HTTPS with a certificate from a
//! test CA, replicating and forwarding to each other over `https://`, the
//! CLI checking certificates with `--cacert`, and the ways a TLS setup can
//! be wrong refused with a clear message.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::Cluster;

/// A CA and a node certificate it signed for 127.0.0.1 and localhost, as
/// PEM files in `dir`: (ca, cert, key).
fn make_certs(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-node.pem")),
        dir.join(format!("{name}-node.key")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn tls_section(ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n[replication]\nlong_poll_ms = 1000\n",
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        ca.to_str().unwrap()
    )
}

/// Runs the CLI; (success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::bin())
        .args(args)
        .env_remove("RIPPLE_URL")
        .env_remove("RIPPLE_CACERT")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_https_cluster_replicates_forwards_and_the_cli_checks_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path(), "good");
    let (other_ca, _, _) = make_certs(dir.path(), "other");
    let cluster = Cluster::start_https(2, &tls_section(&ca, &cert, &key));
    let (a, b) = (cluster.url(0), cluster.url(1));
    assert!(a.starts_with("https://"), "{a}");
    let ca_arg = ca.to_str().unwrap();

    // A write to each node, for keys mastered by the other: forwarded over
    // TLS, then replicated back over TLS.
    let to_b = cluster.key_mastered_by(1, "secure");
    let to_a = cluster.key_mastered_by(0, "secure");
    for (url, key, value) in [(&a, &to_b, "one"), (&b, &to_a, "two")] {
        let (ok, out, err) = cli(&["put", key, value, "--url", url, "--cacert", ca_arg]);
        assert!(ok, "put via {url}: {out}{err}");
    }
    for url in [&a, &b] {
        for (key, value) in [(&to_b, "one"), (&to_a, "two")] {
            let start = Instant::now();
            loop {
                let (ok, out, err) = cli(&["get", key, "--url", url, "--cacert", ca_arg]);
                if ok && out == value {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "{key} never reached {url}: {out}{err}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let urls = format!("{a},{b}");
    let (ok, out, err) = cli(&["verify", "--url", &urls, "--cacert", ca_arg]);
    assert!(ok && out.contains("consistent: 2 nodes"), "{out}{err}");
    let (ok, out, err) = cli(&["status", "--url", &a, "--cacert", ca_arg]);
    assert!(ok && out.contains("n2"), "{out}{err}");

    // Without the CA, or with another one, the CLI refuses the node.
    let (ok, _, err) = cli(&["get", &to_a, "--url", &a]);
    assert!(
        !ok && err.contains("https") && err.contains("--cacert"),
        "{err}"
    );
    let (ok, _, err) = cli(&[
        "get",
        &to_a,
        "--url",
        &a,
        "--cacert",
        other_ca.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("certificate"), "{err}");
    let (ok, _, err) = cli(&["get", &to_a, "--url", &a, "--cacert", "/nonexistent/ca.pem"]);
    assert!(!ok && err.contains("/nonexistent/ca.pem"), "{err}");

    // Plain HTTP to an HTTPS port gets no HTTP answer, and the node goes on.
    let addr = a.trim_start_matches("https://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "{answer:?}"
    );
    let (ok, out, err) = cli(&["get", &to_b, "--url", &a, "--cacert", ca_arg]);
    assert!(ok && out == "one", "{out}{err}");
}

/// Starts `ripple serve` with `config`; it must exit non-zero within 10 s.
/// Returns its stderr.
fn refused(dir: &Path, config: &str) -> String {
    let path = dir.join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "started with {config}");
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return err;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running with {config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_wrong_tls_setup_stops_the_node_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path(), "good");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let (cert, key, ca, garbage) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        ca.to_str().unwrap(),
        garbage.to_str().unwrap(),
    );
    for (config, expected) in [
        (format!("[tls]\ncert = {cert:?}\n"), "tls.cert and tls.key go together"),
        (
            format!("[tls]\ncert = \"/nonexistent/node.pem\"\nkey = {key:?}\n"),
            "/nonexistent/node.pem",
        ),
        (format!("[tls]\ncert = {garbage:?}\nkey = {key:?}\n"), "holds no certificate"),
        (format!("[tls]\ncert = {cert:?}\nkey = {garbage:?}\n"), "private key"),
        // The CA's certificate with the node's key: not a matching pair.
        (format!("[tls]\ncert = {ca:?}\nkey = {key:?}\n"), "certificate and key"),
        (
            "[cluster]\nmembers = [{id = \"n1\", url = \"http://127.0.0.1:1\"}, {id = \"n2\", url = \"https://127.0.0.1:2\"}]\n".to_owned(),
            "set tls.ca",
        ),
        (format!("[tls]\nca = {garbage:?}\n"), "holds no certificate"),
        ("[tls]\ncertificate = \"x\"\n".to_owned(), "unknown field"),
    ] {
        let config = if config.contains("[cluster]") {
            format!("node_id = \"n1\"\n{config}")
        } else {
            config
        };
        let err = refused(dir.path(), &config);
        assert!(err.contains(expected), "{config}\n=> {err}");
    }
}
