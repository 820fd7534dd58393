//! Requests to the kernel's routing netlink (rtnetlink) of this network
//! namespace, through the rust-netlink project's typed messages and its
//! synchronous socket (as `conntrack.rs` does for ctnetlink): one request,
//! its answers collected until the end of a dump or the acknowledgement.
//! A netlink socket belongs to the namespace it is opened in, so this works
//! under `ip netns exec` like `ip` did.

use anyhow::{anyhow, Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Sends `msg` with `flags` (NLM_F_REQUEST and NLM_F_ACK are added) and
/// returns the messages the kernel answers with. A refusal is an
/// `std::io::Error` with the kernel's errno (see [`errno`]).
pub(crate) fn request(msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>> {
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a route netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    if dump {
        // Let the kernel filter a dump by the request's header (table,
        // protocol, type), as iproute2 asks it to: a host with a full
        // routing table must not be read whole once a second. Callers
        // still check what they get (a kernel may ignore the filter).
        let _ = socket.set_netlink_get_strict_chk(true);
    }
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the netlink socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).context("sending to rtnetlink")?;

    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let size = socket
            .recv(&mut &mut rx[..], 0)
            .context("reading from rtnetlink")?;
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[offset..size])
                .map_err(|e| anyhow!("decoding an rtnetlink message: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => match e.code {
                    None if !dump => return Ok(out), // the ack
                    None => {}
                    Some(code) => return Err(std::io::Error::from_raw_os_error(-code.get()).into()),
                },
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

/// The kernel's errno in an error of [`request`], if it is one.
pub(crate) fn errno(e: &anyhow::Error) -> Option<i32> {
    e.downcast_ref::<std::io::Error>()?.raw_os_error()
}
