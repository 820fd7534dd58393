//! One HTTP/1.1 check over a connected stream, plain or TLS: a GET with
//! `Connection: close`, then the answer's status checked against the
//! expected ones and, if asked, its body searched for a text. Only what
//! the check needs is read: the status line without a body match, else the
//! whole answer up to `MAX_CHECK_BODY` bytes of body.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use super::probe::{io_failure, left, Failure};
use crate::model::{HttpCheck, MAX_CHECK_BODY};

/// Runs `http` over `stream`; `host` is the Host header when the check
/// names none; `timeout` sets the stream's read and write timeouts.
pub fn check<S: Read + Write>(
    stream: &mut S,
    http: &HttpCheck,
    host: &str,
    deadline: Instant,
    timeout: &dyn Fn(Duration) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lbctl-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        http.path,
        http.host.as_deref().unwrap_or(host)
    );
    timeout(left(deadline)?).map_err(io_failure)?;
    stream.write_all(request.as_bytes()).map_err(io_failure)?;
    stream.flush().map_err(io_failure)?;
    let answer = read_answer(stream, http.body.is_some(), deadline, timeout)?;
    let status = status_of(&answer.head)?;
    if !http.accepts(status) {
        return Err(format!("HTTP status {status}, expected {}", expected(http)));
    }
    if let Some(want) = &http.body {
        let body = answer.body();
        if !contains(&body, want.as_bytes()) {
            return Err(format!(
                "HTTP body lacks {want:?} (read {} bytes)",
                body.len()
            ));
        }
    }
    Ok(())
}

fn expected(http: &HttpCheck) -> String {
    let r: Vec<String> = http
        .expect
        .iter()
        .map(|&r| crate::model::format_status_range(r))
        .collect();
    r.join(", ")
}

/// An answer as read: its head (up to the blank line) and what came after.
struct Answer {
    head: Vec<u8>,
    rest: Vec<u8>,
    chunked: bool,
}

impl Answer {
    /// The body, de-chunked if it was sent in chunks.
    fn body(&self) -> Vec<u8> {
        if self.chunked {
            dechunk(&self.rest)
        } else {
            self.rest.clone()
        }
    }
}

/// Reads the head, and with `whole` the body too: until the server
/// closes, Content-Length bytes came, the last chunk came, or
/// MAX_CHECK_BODY bytes of it were read.
fn read_answer<S: Read>(
    stream: &mut S,
    whole: bool,
    deadline: Instant,
    timeout: &dyn Fn(Duration) -> std::io::Result<()>,
) -> Result<Answer, Failure> {
    const MAX_HEAD: usize = 16 * 1024;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut head_end = None;
    let (mut length, mut chunked) = (None, false);
    loop {
        if head_end.is_none() {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                head_end = Some(i + 4);
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                for line in head.lines().skip(1) {
                    if let Some((name, value)) = line.split_once(':') {
                        match name.trim() {
                            "content-length" => length = value.trim().parse::<usize>().ok(),
                            "transfer-encoding" => chunked = value.contains("chunked"),
                            _ => {}
                        }
                    }
                }
            } else if buf.len() > MAX_HEAD {
                return Err("HTTP answer head over 16 KiB".into());
            }
        }
        if let Some(end) = head_end {
            let body = buf.len() - end;
            let done = !whole
                || body >= MAX_CHECK_BODY
                || length.is_some_and(|n| body >= n)
                || (chunked && buf.ends_with(b"0\r\n\r\n"));
            if done {
                break;
            }
        } else if !whole && buf.contains(&b'\n') && !buf.starts_with(b"HTTP/") {
            break; // not HTTP: the status line says so already
        }
        timeout(left(deadline)?).map_err(io_failure)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            // A TLS server that closes without close_notify: the end.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failure(e)),
        }
    }
    let end = head_end.unwrap_or(buf.len());
    let mut rest = buf.split_off(end);
    rest.truncate(MAX_CHECK_BODY);
    Ok(Answer {
        head: buf,
        rest,
        chunked,
    })
}

/// The status code of an answer's head.
fn status_of(head: &[u8]) -> Result<u16, Failure> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default();
    line.split_whitespace()
        .nth(1)
        .filter(|_| line.starts_with("HTTP/"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.chars().take(40).collect::<String>()
            )
        })
}

/// A chunked body's data; a truncated one as far as it goes.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let size = String::from_utf8_lossy(&raw[..eol]);
        let size = size.split(';').next().unwrap_or_default().trim();
        let Ok(n) = usize::from_str_radix(size, 16) else {
            break;
        };
        if n == 0 {
            break;
        }
        let data = &raw[eol + 2..];
        let take = n.min(data.len());
        out.extend_from_slice(&data[..take]);
        raw = data.get(take + 2..).unwrap_or_default();
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(raw: &[u8], whole: bool) -> Answer {
        let mut r = raw;
        read_answer(
            &mut r,
            whole,
            Instant::now() + Duration::from_secs(5),
            &|_| Ok(()),
        )
        .unwrap()
    }

    #[test]
    fn status_and_body_of_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndownEXTRA";
        let a = answer(plain, true);
        assert_eq!(status_of(&a.head), Ok(503));
        assert_eq!(a.body(), b"downEXTRA"); // read to the end of the input
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhea\r\n5;x=1\r\nlthy!\r\n0\r\n\r\n";
        let a = answer(chunked, true);
        assert_eq!(a.body(), b"healthy!");
        assert!(status_of(b"SSH-2.0-OpenSSH\r\n")
            .unwrap_err()
            .contains("not an HTTP answer"));
        assert_eq!(
            dechunk(b"4\r\nab"),
            b"ab",
            "a truncated chunk as far as it goes"
        );
    }
}
