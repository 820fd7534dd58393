//! One netlink request and its answer, for any netlink family: the socket,
//! the header, and the read loop that `host::rtnl` (rtnetlink) and
//! `conntrack` (ctnetlink) both need, through the rust-netlink project's
//! synchronous socket. A netlink socket belongs to the network namespace it
//! is opened in, so every request goes to the caller's namespace.

use anyhow::{anyhow, Context, Result};
use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

/// A netlink family, and how its errors name it.
pub(crate) struct Family {
    /// `netlink_sys::protocols::NETLINK_*`.
    pub protocol: isize,
    /// "a route netlink socket".
    pub socket: &'static str,
    /// "rtnetlink": what is sent to and read from.
    pub name: &'static str,
    /// "an rtnetlink message": what failed to decode.
    pub message: &'static str,
    /// Ask the kernel to filter a dump by the request's header
    /// (NETLINK_GET_STRICT_CHK), as iproute2 does for rtnetlink.
    pub filter_dumps: bool,
}

/// Sends `msg` with `flags` (NLM_F_REQUEST is added) and hands `answer`
/// each message the kernel answers with, until the end of a dump, the
/// acknowledgement, or, for a single request that asked for none, the read
/// that brought its answer. A refusal is an `std::io::Error` with the
/// kernel's errno.
pub(crate) fn request<M>(
    family: &Family,
    msg: M,
    flags: u16,
    mut answer: impl FnMut(M),
) -> Result<()>
where
    M: NetlinkSerializable + NetlinkDeserializable,
{
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    // Without an acknowledgement, the answer itself ends a single request.
    let ends_with_answer = !dump && flags & NLM_F_ACK == 0;
    let mut socket =
        Socket::new(family.protocol).with_context(|| format!("opening {}", family.socket))?;
    socket.bind_auto().context("binding the netlink socket")?;
    if dump && family.filter_dumps {
        // A host with a full routing table must not be read whole once a
        // second. Callers still check what they get (a kernel may ignore
        // the filter).
        let _ = socket.set_netlink_get_strict_chk(true);
    }
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the netlink socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .with_context(|| format!("sending to {}", family.name))?;

    let mut answered = false;
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let size = socket
            .recv(&mut &mut rx[..], 0)
            .with_context(|| format!("reading from {}", family.name))?;
        let mut offset = 0;
        while offset < size {
            let msg = NetlinkMessage::<M>::deserialize(&rx[offset..size])
                .map_err(|e| anyhow!("decoding {}: {e}", family.message))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => match e.code {
                    None if !dump => return Ok(()), // the ack
                    None => {}
                    Some(code) => return Err(std::io::Error::from_raw_os_error(-code.get()).into()),
                },
                NetlinkPayload::InnerMessage(m) => {
                    answered = true;
                    answer(m)
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
        if ends_with_answer && answered {
            return Ok(());
        }
    }
}

/// The kernel's errno in an error of [`request`], if it is one.
pub(crate) fn errno(e: &anyhow::Error) -> Option<i32> {
    e.downcast_ref::<std::io::Error>()?.raw_os_error()
}
