//! The Rust side of `bpf/lb_abi.h`. The structs are the skeleton's generated
//! types; the `#define` constants and enum members, which BTF does not carry,
//! are generated from the header by build.rs into `crate::abi` (below
//! `model`, which needs some) and re-exported here.

use super::types;

pub use crate::abi::*;

// SAFETY: plain old data: #[repr(C)], integer fields and arrays only, with
// every padding byte made an explicit field by libbpf-cargo.
unsafe impl plain::Plain for types::lb_endpoint {}
unsafe impl plain::Plain for types::lb_vip {}
unsafe impl plain::Plain for types::lb_backend {}
unsafe impl plain::Plain for types::lb_reply_source {}
unsafe impl plain::Plain for types::lb_config {}
unsafe impl plain::Plain for types::lb_handshake {}
unsafe impl plain::Plain for types::lb_counters {}
unsafe impl plain::Plain for types::lb_flow_cache_key {}
unsafe impl plain::Plain for types::lb_flow_cache_entry {}
unsafe impl plain::Plain for types::lb_flow_cache_counters {}
unsafe impl plain::Plain for types::lb_datapath_counters {}

// The C side asserts nothing about Rust's view: these catch a skeleton that
// laid a struct out differently from the header's intent.
const _: () = assert!(std::mem::size_of::<types::lb_endpoint>() == 20);
const _: () = assert!(std::mem::size_of::<types::lb_vip>() == 40);
// 56 with `health_since` where `reserved` was: the row keeps its layout.
const _: () = assert!(std::mem::size_of::<types::lb_backend>() == 56);
const _: () = assert!(std::mem::size_of::<types::lb_config>() == 24);
const _: () = assert!(std::mem::size_of::<types::lb_handshake>() == 8);
const _: () = assert!(std::mem::size_of::<types::lb_counters>() == 24);
const _: () = assert!(std::mem::size_of::<types::lb_flow_cache_key>() == 16);
const _: () = assert!(std::mem::size_of::<types::lb_flow_cache_entry>() == 120);
const _: () = assert!(std::mem::size_of::<types::lb_flow_cache_counters>() == 24);
const _: () = assert!(REASON_NAMES.len() == types::lb_reason::LB_REASON_MAX.0 as usize);

/// The printed name of a verdict reason (`enum lb_reason`).
pub fn reason_name(reason: types::lb_reason) -> &'static str {
    REASON_NAMES
        .get(reason.0 as usize)
        .copied()
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_constants_agree_with_the_skeleton() {
        assert_eq!(types::lb_reason::LB_PASS_NOT_VIP.0, LB_PASS_NOT_VIP);
        assert_eq!(types::lb_reason::LB_REASON_MAX.0, LB_REASON_MAX);
        assert_eq!(
            reason_name(types::lb_reason::LB_DROP_NO_BACKEND),
            "drop_no_backend"
        );
        assert_eq!(reason_name(types::lb_reason::LB_PASS_NOT_IP), "pass_not_ip");
        assert_eq!(LB_MARK_CLOSING, 0x8000_0000);
        assert_eq!(LB_AF_INET6, 6);
    }
}
