//! Scraping `lbctl run`'s `/metrics` inside a namespace: every series and
//! its value, the text checked by Prometheus's own linter on the way
//! (tests/service.rs, tests/ecmp.rs).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use crate::netns;

/// GET /metrics from 127.0.0.1:`port` in `ns`: series → value. Panics
/// unless the answer is 200 with Prometheus text that promtool accepts.
pub fn scrape(ns: &str, port: u16) -> BTreeMap<String, f64> {
    let text = netns::in_ns(ns, || -> std::io::Result<String> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .unwrap()
    .expect("scraping /metrics");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    promtool_checks(body);
    let mut m = BTreeMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            let ok = line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ");
            assert!(ok, "not Prometheus text: {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value of {line:?}"));
        assert!(m.insert(series.to_string(), v).is_none(), "{series} twice");
    }
    m
}

/// `promtool check metrics` (Prometheus's own linter: names, types, help,
/// units) passes on `body`. promtool comes from `make test-deps`
/// (scripts/get-promtool.sh), or LBCTL_PROMTOOL.
fn promtool_checks(body: &str) {
    let promtool = std::env::var("LBCTL_PROMTOOL").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/tools/promtool").to_string()
    });
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{promtool}: {e} (make test-deps puts it there)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
}
