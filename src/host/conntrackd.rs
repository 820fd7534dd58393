//! conntrackd's state, read from its control socket (`lbctl status`,
//! `/metrics`): whether this balancer's flows are being copied to its peer
//! (README, "Stateful failover").
//!
//! The socket speaks what `conntrackd -s` speaks: the client sends one
//! native-endian `int`, the request (21: statistics, unchanged since
//! conntrack-tools 0.9), and reads text until conntrackd closes. Reading
//! the socket, not running `conntrackd -s`, needs no configuration file
//! and no binary on the path. The text is parsed by its labels; a label
//! that is missing leaves its field unknown (None), so another version's
//! layout shows as unknown, never as a wrong number.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// Where Debian's conntrackd.conf (and contrib/conntrackd/lbctl-sync.conf)
/// puts the socket.
pub const DEFAULT_SOCKET: &str = "/var/run/conntrackd.ctl";

/// conntrackd's request code for its statistics (`conntrackd -s`).
const STATS: i32 = 21;

/// Its replies are a few KiB; a daemon that does not answer in this time
/// is reported as not answering.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One sync channel (a `TCP`, `UDP` or `Multicast` block of its file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Channel {
    /// TCP, UDP or multicast, as conntrackd names it.
    pub kind: String,
    pub device: String,
    /// TCP only: its server (the peer's connection to it) and its client
    /// (its connection to the peer), e.g. "connected", "disconnected".
    pub server: Option<String>,
    pub client: Option<String>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub messages_sent: Option<u64>,
    pub messages_received: Option<u64>,
    pub send_errors: Option<u64>,
    pub receive_errors: Option<u64>,
}

impl Channel {
    /// Whether a TCP channel is up both ways; None for UDP and multicast,
    /// which have no connection (their received count tells).
    pub fn connected(&self) -> Option<bool> {
        match (&self.server, &self.client) {
            (Some(s), Some(c)) => Some(s == "connected" && c == "connected"),
            _ => None,
        }
    }
}

/// The operations of `SyncStats::written`, in its order, as conntrackd
/// names them ("connections created:").
pub const WRITE_OPS: [&str; 3] = ["created", "updated", "destroyed"];

/// What conntrackd's statistics say about the sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Entries of this host's table that pass its filter: what it sends
    /// (`cache internal`, `current active connections`).
    pub entries: Option<u64>,
    /// Entries the peer sent, written into this host's table
    /// (`external inject`): created, updated and destroyed (by
    /// `WRITE_OPS`), and how many of those writes failed.
    pub written: [Option<u64>; 3],
    pub written_failed: Option<u64>,
    /// Messages lost on the way in (sequence tracking).
    pub lost_messages: Option<u64>,
    /// The active channel first (conntrackd lists it so).
    pub channels: Vec<Channel>,
}

impl SyncStats {
    /// The channel that carries the sync.
    pub fn channel(&self) -> Option<&Channel> {
        self.channels.first()
    }
}

/// Asks the conntrackd at `socket` for its statistics. Err when nothing
/// answers there (no daemon, or one that does not sync).
pub fn query(socket: &Path) -> Result<SyncStats> {
    let text = request(socket, STATS)?;
    let stats = parse(&text);
    anyhow::ensure!(
        stats.entries.is_some() || !stats.channels.is_empty(),
        "conntrackd at {} answered, but not with sync statistics (is it in sync mode?)",
        socket.display()
    );
    Ok(stats)
}

fn request(socket: &Path, code: i32) -> Result<String> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("no conntrackd answers at {}", socket.display()))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(&code.to_ne_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("reading conntrackd's answer at {}", socket.display()))?;
    Ok(out)
}

/// The numbers of a line after `label`, in order.
fn numbers_after(line: &str, label: &str) -> Vec<u64> {
    line[label.len()..]
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// conntrackd's statistics text → `SyncStats`. Sections start at a line
/// without leading white space; the numbers of a counter line precede
/// their labels ("1788 Bytes sent   1208 Bytes recv") or follow them
/// ("connections created:   7   failed:   0").
pub fn parse(text: &str) -> SyncStats {
    let mut st = SyncStats::default();
    let mut section = "";
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with([' ', '\t']) && line.trim_end().ends_with(':') {
            section = line.trim_end();
            if let Some(ch) = channel_header(section) {
                st.channels.push(ch);
            }
            continue;
        }
        let l = line.trim();
        match section {
            "cache internal:" if l.starts_with("current active connections:") => {
                st.entries = numbers_after(l, "current active connections:")
                    .first()
                    .copied();
            }
            "external inject:" => {
                for (op, field) in WRITE_OPS.iter().zip(&mut st.written) {
                    let label = format!("connections {op}:");
                    if l.starts_with(&label) {
                        let n = numbers_after(l, &label);
                        *field = n.first().copied();
                        if let Some(failed) = n.get(1) {
                            *st.written_failed.get_or_insert(0) += failed;
                        }
                    }
                }
            }
            "message tracking:" => {
                let words: Vec<&str> = l.split_whitespace().collect();
                for w in words.windows(3) {
                    if w[1] == "Lost" && w[2] == "msgs" {
                        st.lost_messages = w[0].parse().ok();
                    }
                }
            }
            _ if section.contains(" traffic ") => {
                if let Some(ch) = st.channels.last_mut() {
                    counter_line(ch, l);
                }
            }
            _ => {}
        }
    }
    st
}

/// "TCP traffic (active device=lb0) server=connected client=connected:"
fn channel_header(line: &str) -> Option<Channel> {
    let (kind, rest) = line.split_once(" traffic ")?;
    let mut ch = Channel {
        kind: kind.to_string(),
        ..Default::default()
    };
    for word in rest.trim_end_matches(':').split([' ', '(', ')']) {
        if let Some((key, value)) = word.split_once('=') {
            let value = value.to_string();
            match key {
                "device" => ch.device = value,
                "server" => ch.server = Some(value),
                "client" => ch.client = Some(value),
                _ => {}
            }
        }
    }
    Some(ch)
}

/// "1788 Bytes sent  1208 Bytes recv" and its kin: each number with the
/// two words after it.
fn counter_line(ch: &mut Channel, line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    for w in words.windows(3) {
        let Ok(n) = w[0].parse::<u64>() else {
            continue;
        };
        let field = match (w[1], w[2]) {
            ("Bytes", "sent") => &mut ch.bytes_sent,
            ("Bytes", "recv") => &mut ch.bytes_received,
            ("Pckts", "sent") => &mut ch.messages_sent,
            ("Pckts", "recv") => &mut ch.messages_received,
            ("Error", "send") => &mut ch.send_errors,
            ("Error", "recv") => &mut ch.receive_errors,
            _ => continue,
        };
        *field = Some(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from conntrackd 1.4.7 (Debian 12) running
    // contrib/conntrackd/lbctl-sync.conf: a sender with 7 entries whose peer
    // sent them back (active/active), the same after its peer died, and
    // a UDP channel.
    const TCP: &str = include_str!("testdata/conntrackd-1.4.7-tcp.txt");
    const TCP_DOWN: &str = include_str!("testdata/conntrackd-1.4.7-tcp-down.txt");
    const UDP: &str = include_str!("testdata/conntrackd-1.4.7-udp.txt");

    #[test]
    fn a_connected_tcp_channel() {
        let st = parse(TCP);
        assert_eq!(st.entries, Some(7));
        assert_eq!(st.written, [Some(7), Some(7), Some(0)]);
        assert_eq!(st.written_failed, Some(0));
        assert_eq!(st.lost_messages, Some(0));
        assert_eq!(
            st.channel(),
            Some(&Channel {
                kind: "TCP".into(),
                device: "lb0".into(),
                server: Some("connected".into()),
                client: Some("connected".into()),
                bytes_sent: Some(1788),
                bytes_received: Some(1208),
                messages_sent: Some(6),
                messages_received: Some(5),
                send_errors: Some(1),
                receive_errors: Some(0),
            })
        );
        assert_eq!(st.channel().unwrap().connected(), Some(true));
    }

    #[test]
    fn a_tcp_channel_whose_peer_died() {
        let st = parse(TCP_DOWN);
        let ch = st.channel().unwrap();
        assert_eq!(ch.server.as_deref(), Some("disconnected"));
        assert_eq!(ch.connected(), Some(false));
    }

    #[test]
    fn a_udp_channel_has_no_connection() {
        let st = parse(UDP);
        let ch = st.channel().unwrap();
        assert_eq!((ch.kind.as_str(), ch.device.as_str()), ("UDP", "lb0"));
        assert_eq!(ch.connected(), None);
        assert_eq!(ch.messages_received, Some(3));
    }

    #[test]
    fn another_layout_is_unknown_not_wrong() {
        let st = parse("something else:\n  42 things\n");
        assert_eq!(st, SyncStats::default());
    }

    #[test]
    fn no_daemon_is_an_error_naming_the_socket() {
        let err = query(Path::new("/nonexistent/conntrackd.ctl")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/conntrackd.ctl"));
    }
}
