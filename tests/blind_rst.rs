//! Blind resets in a lab of namespaces (bpf/tcp_seq.h): a real connection
//! through lbctl (two-arm dnat), idle; an RST on its 4-tuple with a wrong
//! sequence number, sent from the client's namespace through a raw socket,
//! leaves its conntrack entry the established timeout and the connection
//! working; the client's own RST (close with SO_LINGER 0) moves the entry to
//! the closing timeout.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use lbctl_lab::clients::{self, ClientError};
use lbctl_lab::fixtures::packet::Packet;
use lbctl_lab::lab::{Family, Lab};

const ECHO_PORT: u16 = 8080;
const RST: u8 = 0x04;

fn lbctl(lab: &Lab, args: &[&str]) -> String {
    lbctl_lab::balanced::lbctl(lab, env!("CARGO_BIN_EXE_lbctl"), args)
}

/// The balancer's conntrack entry of the client's port: its timeout.
fn entry_timeout(lab: &Lab, client_port: u16) -> Option<u32> {
    let list = lab
        .exec(lab.balancer_ns(), &["conntrack", "-L", "-p", "tcp"])
        .unwrap();
    let line = list
        .lines()
        .find(|l| l.contains(&format!("sport={client_port} ")))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Sends `ip` (an IPv4 packet, header included) from this namespace.
fn send_raw(ip: &[u8], to: IpAddr) {
    let IpAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as _,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.octets()),
            },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            fd,
            ip.as_ptr().cast(),
            ip.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as _,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(sent, ip.len() as isize, "sendto: {err}");
    }
}

/// Closes the stream with an RST (SO_LINGER 0), as an aborting client does.
fn abort(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on the stream's own descriptor.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as _,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(stream);
}

fn echo(stream: &mut TcpStream, what: &[u8]) -> Result<(), ClientError> {
    stream.write_all(what)?;
    let mut got = vec![0; what.len()];
    stream.read_exact(&mut got)?;
    assert_eq!(got, what);
    Ok(())
}

#[test]
fn a_blind_rst_leaves_a_connection_alone_and_the_clients_own_closes_it() {
    let mut lab = Lab::two_arm(1).expect("building the lab");
    lab.start_servers().expect("starting servers");
    for iface in lab.lb_ifaces() {
        lbctl(&lab, &["attach", iface]);
    }
    let vip = lab.vip_ip(1, Family::V4);
    let v = SocketAddr::new(vip, 80).to_string();
    lbctl(
        &lab,
        &["vip", "add", &v, "--proto", "tcp", "--mode", "dnat"],
    );
    let b = SocketAddr::new(lab.backend_ip(1, Family::V4), ECHO_PORT).to_string();
    lbctl(&lab, &["backend", "add", &v, &b, "--proto", "tcp"]);

    let (mut stream, port) = lab
        .in_client(|| -> Result<_, ClientError> {
            let mut s = clients::connect(vip, 80, clients::client_timeout())?;
            clients::read_hello(&mut s)?;
            echo(&mut s, b"before")?;
            let port = s.local_addr()?.port();
            Ok((s, port))
        })
        .expect("a connection through lbctl");
    let established = entry_timeout(&lab, port).expect("the connection's entry");
    assert!(established > 800, "established: {established}");

    // A stranger's RST: the right 4-tuple, a sequence number it had to guess.
    let client = SocketAddr::new(lab.client_ip(Family::V4), port).to_string();
    let blind = Packet::tcp(&client, &v, RST | 0x10)
        .seq(0x1234_5678)
        .build();
    lab.in_client(|| -> Result<(), ClientError> {
        send_raw(&blind[14..], vip);
        Ok(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = entry_timeout(&lab, port).expect("the entry is still there");
    assert!(
        after > 800,
        "a blind RST moved the entry to {after} s: {}",
        lbctl(&lab, &["status"])
    );
    let status = lbctl(&lab, &["status"]);
    assert!(
        status.contains("blind closes  1 "),
        "counted as unverified: {status}"
    );
    let json = lbctl(&lab, &["list", "--stats", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(doc["datapath"]["unverified_closes"], 1, "{json}");

    // The connection goes on...
    lab.in_client(|| echo(&mut stream, b"after the blind RST"))
        .expect("the connection survives a blind RST");
    assert!(entry_timeout(&lab, port).unwrap() > 800);

    // ...until the client aborts it: its own RST, with its own number.
    lab.in_client(|| -> Result<(), ClientError> {
        abort(stream);
        Ok(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let closing = entry_timeout(&lab, port).expect("the entry, closing");
    assert!(
        closing <= 120,
        "the client's RST: closing timeout, got {closing}"
    );
    assert!(lbctl(&lab, &["status"]).contains("blind closes  1 "));
    lab.teardown().unwrap();
}
