//! Requests to the kernel's routing netlink (rtnetlink) of this network
//! namespace, through the rust-netlink project's typed messages and
//! `crate::netlink` (as `conntrack.rs` does for ctnetlink): one request,
//! its answers collected until the end of a dump or the acknowledgement.
//! A netlink socket belongs to the namespace it is opened in, so this works
//! under `ip netns exec` like `ip` did.

use anyhow::Result;
use netlink_packet_core::NLM_F_ACK;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::netlink::{self, Family};

pub(crate) use crate::netlink::errno;

const RTNETLINK: Family = Family {
    protocol: NETLINK_ROUTE,
    socket: "a route netlink socket",
    name: "rtnetlink",
    message: "an rtnetlink message",
    filter_dumps: true,
};

/// Sends `msg` with `flags` (NLM_F_REQUEST and NLM_F_ACK are added) and
/// returns the messages the kernel answers with. A refusal is an
/// `std::io::Error` with the kernel's errno (see [`errno`]).
pub(crate) fn request(msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>> {
    let mut out = Vec::new();
    netlink::request(&RTNETLINK, msg, NLM_F_ACK | flags, |m| out.push(m))?;
    Ok(out)
}
