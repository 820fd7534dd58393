//! Health checks against real servers: HTTP/1.1 (Host, path, statuses, a
//! chunked body) and HTTPS (SNI, certificate verification against a CA
//! made here) probes, run as `lbctl run` runs them — from the balancer's
//! namespace, under a conntrack hold — to a Python server in a backend's
//! namespace (tests/data/health/http_server.py).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use lbctl::model::{CheckKind, HttpCheck, TlsCheck};
use lbctl::service::health::probe::probe;
use lbctl_lab::clients::scaled;
use lbctl_lab::lab::Lab;
use lbctl_lab::lbctl_ns::run_ok;
use lbctl_lab::netns;

const SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/health/http_server.py"
);

/// A directory of this test's, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(lab: &Lab, what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("{}{what}", lab.prefix()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Python server in backend 1's namespace, stopped on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Serves on port `port` of backend 1 (HTTPS with `tls`: cert, key);
    /// `/host` passes for Host `host`.
    fn start(
        lab: &Lab,
        dir: &Scratch,
        port: u16,
        host: &str,
        tls: Option<(&Path, &Path)>,
    ) -> Server {
        let ready = dir.file(&format!("ready-{port}"));
        let addr = SocketAddr::new(lab.backend_addr(1).into(), port);
        let mut argv: Vec<String> = [
            "python3",
            SERVER,
            "--addr",
            &addr.ip().to_string(),
            "--port",
            &port.to_string(),
            "--host",
            host,
            "--ready",
            ready.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        if let Some((cert, key)) = tls {
            for (flag, p) in [("--cert", cert), ("--key", key)] {
                argv.extend([flag.to_string(), p.to_str().unwrap().to_string()]);
            }
        }
        let child = netns::spawn(lab.backend_ns(1), &argv).expect("starting the Python server");
        let server = Server { child, addr };
        let deadline = Instant::now() + scaled(Duration::from_secs(5));
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "the server on {addr} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// One probe of `kind` from the balancer's namespace.
    fn check(&self, lab: &Lab, kind: &CheckKind) -> Result<(), String> {
        let (addr, timeout) = (self.addr, scaled(Duration::from_secs(2)));
        netns::in_ns(lab.balancer_ns(), || probe(kind, addr, timeout)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(path: &str, f: impl FnOnce(&mut HttpCheck)) -> CheckKind {
    let mut h = HttpCheck::get(path);
    f(&mut h);
    CheckKind::Http(h)
}

fn fails_with(r: Result<(), String>, what: &str) {
    match r {
        Err(e) => assert!(e.contains(what), "failed, but not with {what:?}: {e}"),
        Ok(()) => panic!("passed; expected a failure with {what:?}"),
    }
}

#[test]
fn http_checks_send_host_and_path_and_match_statuses_and_body() {
    let lab = Lab::two_arm(1).expect("building the lab");
    let dir = Scratch::new(&lab, "http");
    let s = Server::start(&lab, &dir, 8081, "app.example", None);
    s.check(&lab, &http("/", |_| {})).unwrap();
    fails_with(
        s.check(&lab, &http("/status/503", |_| {})),
        "HTTP status 503, expected 200",
    );
    s.check(
        &lab,
        &http("/status/503", |h| h.expect = vec![(200, 299), (500, 599)]),
    )
    .unwrap();
    s.check(&lab, &http("/status/301", |h| h.expect = vec![(301, 301)]))
        .unwrap();
    // Host: the backend's address unless the check names one.
    fails_with(s.check(&lab, &http("/host", |_| {})), "HTTP status 421");
    s.check(
        &lab,
        &http("/host", |h| h.host = Some("app.example".into())),
    )
    .unwrap();
    // A chunked body is searched once de-chunked ("hea" + "lthy").
    s.check(&lab, &http("/chunked", |h| h.body = Some("healthy".into())))
        .unwrap();
    fails_with(
        s.check(&lab, &http("/chunked", |h| h.body = Some("sick".into()))),
        "HTTP body lacks \"sick\"",
    );
    s.check(&lab, &CheckKind::Tcp).unwrap();
    // Nothing listening: refused.
    let closed = SocketAddr::new(lab.backend_addr(1).into(), 8089);
    let refused = netns::in_ns(lab.balancer_ns(), || {
        probe(&http("/", |_| {}), closed, Duration::from_secs(2))
    });
    fails_with(refused.unwrap(), "connection refused");
}

/// A CA, and a server certificate it signed for app.example and the
/// backend's address: (CA, certificate, key).
fn certificates(lab: &Lab, dir: &Scratch) -> (PathBuf, PathBuf, PathBuf) {
    let f = |name: &str| dir.file(name).to_str().unwrap().to_string();
    let ext = format!(
        "subjectAltName=DNS:app.example,IP:{}\n",
        lab.backend_addr(1)
    );
    std::fs::write(f("ext.cnf"), ext).unwrap();
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let ca = "-x509 -days 2 -subj /CN=lbctl-test-CA -addext basicConstraints=critical,CA:TRUE \
              -addext keyUsage=critical,keyCertSign";
    for cmd in
        [
            format!(
                "openssl req {key} {ca} -keyout {} -out {}",
                f("ca.key"),
                f("ca.pem")
            ),
            format!(
                "openssl req {key} -subj /CN=app.example -keyout {} -out {}",
                f("srv.key"),
                f("srv.csr")
            ),
            format!(
            "openssl x509 -req -in {} -CA {} -CAkey {} -CAcreateserial -days 2 -extfile {} -out {}",
            f("srv.csr"), f("ca.pem"), f("ca.key"), f("ext.cnf"), f("srv.pem")
        ),
        ]
    {
        run_ok(&cmd.split_whitespace().collect::<Vec<_>>());
    }
    (dir.file("ca.pem"), dir.file("srv.pem"), dir.file("srv.key"))
}

#[test]
fn https_checks_send_sni_and_verify_the_certificate_when_asked() {
    let lab = Lab::two_arm(1).expect("building the lab");
    let dir = Scratch::new(&lab, "https");
    let (ca, cert, key) = certificates(&lab, &dir);
    let s = Server::start(&lab, &dir, 8443, "app.example", Some((&cert, &key)));
    let https =
        |path: &str, sni: Option<&str>, verify: bool, ca: Option<&PathBuf>, body: Option<&str>| {
            http(path, |h| {
                h.body = body.map(String::from);
                h.tls = Some(TlsCheck {
                    sni: sni.map(String::from),
                    verify,
                    ca: ca.cloned(),
                });
            })
        };
    // Without verify any certificate does; the name asked for is sent.
    s.check(&lab, &https("/", None, false, None, None)).unwrap();
    s.check(
        &lab,
        &https(
            "/sni",
            Some("app.example"),
            false,
            None,
            Some("sni=app.example"),
        ),
    )
    .unwrap();
    // Verified against the CA: the right name, or the address it was made for.
    s.check(
        &lab,
        &https("/", Some("app.example"), true, Some(&ca), None),
    )
    .unwrap();
    s.check(&lab, &https("/", None, true, Some(&ca), None))
        .unwrap();
    fails_with(
        s.check(
            &lab,
            &https("/", Some("other.example"), true, Some(&ca), None),
        ),
        "not valid for name \"other.example\"",
    );
    // The host's CAs never signed it.
    fails_with(
        s.check(&lab, &https("/", Some("app.example"), true, None, None)),
        "UnknownIssuer",
    );
    // A plain HTTP check of a TLS port is not HTTP.
    fails_with(s.check(&lab, &http("/", |_| {})), "");
}
