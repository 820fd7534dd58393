//! The Rust side of `bpf/lb_abi.h`. The structs are the skeleton's generated
//! types; only the `#define` constants, which BTF does not carry, are
//! repeated here, and a unit test checks them against the header.

use super::types;

// SAFETY: plain old data: #[repr(C)], integer fields and arrays only, with
// every padding byte made an explicit field by libbpf-cargo.
unsafe impl plain::Plain for types::lb_endpoint {}
unsafe impl plain::Plain for types::lb_vip {}
unsafe impl plain::Plain for types::lb_backend {}
unsafe impl plain::Plain for types::lb_reply_source {}
unsafe impl plain::Plain for types::lb_config {}
unsafe impl plain::Plain for types::lb_counters {}
unsafe impl plain::Plain for types::lb_flow_cache_key {}
unsafe impl plain::Plain for types::lb_flow_cache_entry {}
unsafe impl plain::Plain for types::lb_flow_cache_counters {}

pub const LB_MAX_VIPS: u32 = 1024;
pub const LB_MAX_BACKENDS: u32 = 65536;
pub const LB_MAX_TABLE_SIZE: u32 = 131071;
pub const LB_FLOW_CACHE_ENTRIES: u32 = 65536;
pub const LB_TABLE_HDR: u32 = 1;
pub const LB_AF_INET: u8 = 4;
pub const LB_AF_INET6: u8 = 6;
pub const LB_VIP_FULLNAT: u32 = 1;
pub const LB_BACKEND_IN_USE: u32 = 1;
pub const LB_MARK_BACKEND_MASK: u32 = 0x0001_ffff;
pub const LB_MARK_VIP_SHIFT: u32 = 17;
pub const LB_MARK_VIP_MASK: u32 = 0x7ff;
pub const LB_MARK_CLOSING: u32 = 0x8000_0000;
pub const LB_DEFAULT_TCP_TIMEOUT_S: u32 = 900;
pub const LB_DEFAULT_TCP_FIN_TIMEOUT_S: u32 = 120;
pub const LB_DEFAULT_UDP_TIMEOUT_S: u32 = 300;
pub const LB_PREFILTER_MULT: u32 = 0x9e37_79b1;
pub const LB_PREFILTER_SHIFT: u32 = 16;
pub const LB_PREFILTER_WORDS: u32 = 1024;
pub const LB_PREFILTER_DST: u32 = 0;
pub const LB_PREFILTER_SRC: u32 = 1024;

const _: () = assert!(std::mem::size_of::<types::lb_endpoint>() == 20);
const _: () = assert!(std::mem::size_of::<types::lb_vip>() == 40);
const _: () = assert!(std::mem::size_of::<types::lb_backend>() == 56);
const _: () = assert!(std::mem::size_of::<types::lb_config>() == 24);
const _: () = assert!(std::mem::size_of::<types::lb_counters>() == 24);
const _: () = assert!(std::mem::size_of::<types::lb_flow_cache_key>() == 16);
const _: () = assert!(std::mem::size_of::<types::lb_flow_cache_entry>() == 56);
const _: () = assert!(std::mem::size_of::<types::lb_flow_cache_counters>() == 24);

/// The name lbctl prints for each verdict reason, in `enum lb_reason` order.
pub const REASONS: [(types::lb_reason, &str); types::lb_reason::LB_REASON_MAX.0 as usize] = [
    (types::lb_reason::LB_PASS_NOT_IP, "pass_not_ipv4"),
    (types::lb_reason::LB_PASS_NOT_VIP, "pass_not_vip"),
    (types::lb_reason::LB_PASS_OTHER_PROTO, "pass_other_proto"),
    (types::lb_reason::LB_PASS_MALFORMED, "pass_malformed"),
    (types::lb_reason::LB_DROP_FRAGMENT, "drop_fragment"),
    (types::lb_reason::LB_PASS_FRAGMENT, "pass_fragment"),
    (types::lb_reason::LB_DROP_NO_BACKEND, "drop_no_backend"),
    (types::lb_reason::LB_DROP_CT_FAILED, "drop_conntrack_failed"),
    (
        types::lb_reason::LB_PASS_REPLY_UNTRACKED,
        "pass_reply_untracked",
    ),
    (types::lb_reason::LB_TX, "xdp_tx"),
    (types::lb_reason::LB_REDIRECT, "xdp_redirect"),
    (types::lb_reason::LB_PASS_NO_NEIGH, "pass_no_neighbour"),
    (types::lb_reason::LB_PASS_FIB, "pass_to_stack_routing"),
    (
        types::lb_reason::LB_PASS_FOREIGN_CT,
        "pass_foreign_conntrack",
    ),
    (
        types::lb_reason::LB_DROP_REPLY_UNTRACKED,
        "drop_reply_untracked",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = include_str!("../../bpf/lb_abi.h");

    fn define(name: &str) -> u64 {
        let line = HEADER
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name) && l.starts_with("#define"))
            .unwrap_or_else(|| panic!("{name} not defined in lb_abi.h"));
        // The value: a number, or `(1u << N)`; a comment may follow.
        let value = line
            .split_whitespace()
            .skip(2)
            .take_while(|w| !w.starts_with("/*"));
        let expr: String = value.collect::<Vec<_>>().join("");
        let expr = expr.trim_matches(['(', ')']);
        let number = |v: &str| {
            let v = v.trim_end_matches('u');
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
                None => v.parse().unwrap(),
            }
        };
        match expr.split_once("<<") {
            Some((a, b)) => number(a) << number(b),
            None => number(expr),
        }
    }

    #[test]
    fn constants_match_the_header() {
        let checks: [(&str, u64); 19] = [
            ("LB_MAX_VIPS", LB_MAX_VIPS.into()),
            ("LB_FLOW_CACHE_ENTRIES", LB_FLOW_CACHE_ENTRIES.into()),
            ("LB_MAX_BACKENDS", LB_MAX_BACKENDS.into()),
            ("LB_MAX_TABLE_SIZE", LB_MAX_TABLE_SIZE.into()),
            ("LB_TABLE_HDR", LB_TABLE_HDR.into()),
            ("LB_VIP_FULLNAT", LB_VIP_FULLNAT.into()),
            ("LB_BACKEND_IN_USE", LB_BACKEND_IN_USE.into()),
            ("LB_MARK_BACKEND_MASK", LB_MARK_BACKEND_MASK.into()),
            ("LB_MARK_VIP_SHIFT", LB_MARK_VIP_SHIFT.into()),
            ("LB_MARK_VIP_MASK", LB_MARK_VIP_MASK.into()),
            ("LB_MARK_CLOSING", LB_MARK_CLOSING.into()),
            ("LB_DEFAULT_TCP_TIMEOUT_S", LB_DEFAULT_TCP_TIMEOUT_S.into()),
            (
                "LB_DEFAULT_TCP_FIN_TIMEOUT_S",
                LB_DEFAULT_TCP_FIN_TIMEOUT_S.into(),
            ),
            ("LB_DEFAULT_UDP_TIMEOUT_S", LB_DEFAULT_UDP_TIMEOUT_S.into()),
            ("LB_PREFILTER_MULT", LB_PREFILTER_MULT.into()),
            ("LB_PREFILTER_SHIFT", LB_PREFILTER_SHIFT.into()),
            ("LB_PREFILTER_WORDS", LB_PREFILTER_WORDS.into()),
            ("LB_PREFILTER_DST", LB_PREFILTER_DST.into()),
            ("LB_PREFILTER_SRC", LB_PREFILTER_SRC.into()),
        ];
        for (name, value) in checks {
            assert_eq!(
                define(name),
                value,
                "{name} differs between lb_abi.h and abi.rs"
            );
        }
        assert!(HEADER.contains("LB_AF_INET  = 4") && HEADER.contains("LB_AF_INET6 = 6"));
    }

    #[test]
    fn reasons_are_in_enum_order() {
        for (i, (reason, _)) in REASONS.iter().enumerate() {
            assert_eq!(reason.0 as usize, i);
        }
    }
}
