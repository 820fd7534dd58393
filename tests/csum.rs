//! Single-function tests of the data path's checksums (bpf/csum.h), in the
//! style of Cilium's bpf/tests: crates/lab/bpf/csum_check.bpf.c runs one
//! csum.h function, loaded through the real verifier, on inputs carried in
//! the frame (BPF_PROG_TEST_RUN), and each answer is compared with an
//! independent Rust reference: the RFC 1071 sum over big-endian words,
//! computed over the whole data each time (never incrementally).

use lbctl_lab::csum_check;
use lbctl_lab::rng::Rng;
use libbpf_rs::ProgramInput;

const OP_FOLD: u32 = 0;
const OP_APPLY: u32 = 1;
const OP_APPLY_UDP: u32 = 2;
const OP_REWRITE: u32 = 3;
const OP_IPV4_HEADER: u32 = 4;
const OP_PSEUDO: u32 = 5;
const OP_FRAME_SUM: u32 = 6;
const OP_BYTES: u32 = 7;
const OP_DECREMENT_TTL: u32 = 8;

/// `struct csum_case` in csum_check.bpf.c; the bytes to sum follow it.
const CASE_LEN: usize = 128;
const OUT: usize = 112;
const OUT2: usize = 116;
const LB_AF_INET: u32 = 4;
const LB_AF_INET6: u32 = 6;
const TCP: u8 = 6;
const UDP: u8 = 17;
/// frame_sum's answer when the bytes are not all in the frame.
const LB_CSUM_FAILED: u32 = 0x10000;

/// One input to the program, field by field (see `struct csum_case`).
#[derive(Default, Clone)]
struct Case {
    op: u32,
    family: u32,
    proto: u32,
    len: u32,
    off: u32,
    check: u16,
    check2: u16,
    acc: u64,
    old: [u8; 16],
    new: [u8; 16],
    old2: [u8; 16],
    new2: [u8; 16],
    ports: [u8; 4],
    ports2: [u8; 4],
    data: Vec<u8>,
}

/// The `family` of `struct csum_case` for addresses of `alen` bytes.
fn family(alen: usize) -> u32 {
    if alen == 16 {
        LB_AF_INET6
    } else {
        LB_AF_INET
    }
}

/// One constructor per csum.h function under test, with its inputs.
impl Case {
    /// A case of `op` on `data` (the bytes after the case), all else 0.
    fn on(op: u32, data: &[u8]) -> Case {
        Case {
            op,
            data: data.to_vec(),
            ..Default::default()
        }
    }

    /// `csum_fold(acc)`.
    fn fold(acc: u64) -> Case {
        Case {
            acc,
            ..Case::on(OP_FOLD, &[])
        }
    }

    /// The IPv4 header checksum over `hdr`.
    fn ipv4_header(hdr: &[u8]) -> Case {
        Case::on(OP_IPV4_HEADER, hdr)
    }

    /// The pseudo-header sum of `saddr` to `daddr` (both IPv4 or both IPv6).
    fn pseudo(saddr: &[u8], daddr: &[u8], proto: u8, len: usize) -> Case {
        Case {
            family: family(saddr.len()),
            proto: proto as u32,
            len: len as u32,
            old: addr16(saddr),
            new: addr16(daddr),
            ..Case::on(OP_PSEUDO, &[])
        }
    }

    /// `frame_sum` over `len` bytes of `data`, from `lead` bytes into it.
    fn frame_sum(data: &[u8], lead: usize, len: u32) -> Case {
        Case {
            off: (CASE_LEN + lead) as u32,
            len,
            ..Case::on(OP_FRAME_SUM, data)
        }
    }

    /// The sum of the whole of `data` as one block.
    fn bytes(data: &[u8]) -> Case {
        Case {
            len: data.len() as u32,
            ..Case::on(OP_BYTES, data)
        }
    }

    /// The TTL decrement of the IPv4 header `hdr`, its checksum updated.
    fn decrement_ttl(hdr: &[u8]) -> Case {
        Case::on(OP_DECREMENT_TTL, hdr)
    }

    fn frame(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(CASE_LEN + self.data.len());
        for v in [self.op, self.family, self.proto, self.len, self.off] {
            f.extend_from_slice(&v.to_ne_bytes());
        }
        // Checksums as in a packet: the field's bytes.
        f.extend_from_slice(&self.check.to_be_bytes());
        f.extend_from_slice(&[0; 2]);
        f.extend_from_slice(&self.check2.to_be_bytes());
        f.extend_from_slice(&[0; 2]);
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(&self.acc.to_ne_bytes());
        for a in [&self.old, &self.new, &self.old2, &self.new2] {
            f.extend_from_slice(a);
        }
        f.extend_from_slice(&self.ports);
        f.extend_from_slice(&self.ports2);
        f.resize(CASE_LEN, 0);
        f.extend_from_slice(&self.data);
        // BPF_PROG_TEST_RUN wants at least an Ethernet header's worth.
        f
    }
}

struct Check {
    skel: csum_check::CsumCheckSkel<'static>,
}

impl Check {
    fn load() -> Self {
        let skel = lbctl_lab::load_test_prog(csum_check::CsumCheckSkelBuilder::default())
            .expect("loading the checksum test program");
        Check { skel }
    }

    /// The frame as the program left it.
    fn run(&self, case: &Case) -> Vec<u8> {
        let frame = case.frame();
        let mut out = vec![0u8; frame.len()];
        let input = ProgramInput {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..Default::default()
        };
        let res = self.skel.progs.csum_check.test_run(input).unwrap();
        assert_eq!(res.return_value, 2, "XDP_PASS for op {}", case.op);
        out
    }

    /// The 32-bit result as the program computed it (host order).
    fn out(&self, case: &Case) -> u32 {
        let out = self.run(case);
        u32::from_ne_bytes(out[OUT..OUT + 4].try_into().unwrap())
    }

    /// A 16-bit sum or checksum the program computed from words loaded in
    /// memory order, as the bytes it would put in a packet: comparable with
    /// the reference's big-endian value.
    fn out_field(&self, case: &Case) -> u16 {
        let v = self.out(case);
        assert!(v <= 0xffff, "op {}: {v:#x} is more than 16 bits", case.op);
        u16::from_be_bytes((v as u16).to_ne_bytes())
    }
}

// The reference: RFC 1071, written from the RFC, independent of csum.h.

/// The one's complement sum of the bytes as big-endian 16-bit words, an
/// odd last byte padded with zero, folded to 16 bits.
fn sum16(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for w in bytes.chunks(2) {
        let hi = w[0] as u64;
        let lo = w.get(1).copied().unwrap_or(0) as u64;
        sum += hi << 8 | lo;
    }
    fold(sum)
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field for data whose other bytes sum to `sum`.
fn checksum(sum: u16) -> u16 {
    !sum
}

fn pseudo_header(saddr: &[u8], daddr: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(saddr);
    p.extend_from_slice(daddr);
    if saddr.len() == 4 {
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    }
    p
}

/// A TCP or UDP segment's complete checksum over its pseudo-header.
fn l4_checksum(saddr: &[u8], daddr: &[u8], proto: u8, seg: &[u8]) -> u16 {
    let mut all = pseudo_header(saddr, daddr, proto, seg.len());
    all.extend_from_slice(seg);
    let c = checksum(sum16(&all));
    if proto == UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// An IPv4 header of random bytes, its checksum field 0.
fn random_ipv4_header(rng: &mut Rng) -> Vec<u8> {
    let mut hdr = rng.bytes(20);
    hdr[10..12].fill(0);
    hdr
}

fn addr16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..b.len()].copy_from_slice(b);
    a
}

#[test]
fn fold_carries_end_around() {
    let check = Check::load();
    let mut rng = Rng(0x5eed_0001);
    let mut accs: Vec<u64> = vec![
        0,
        1,
        0xfffe,
        0xffff,
        0x1_0000,
        0x1_fffe,
        0x1_ffff,
        0xffff_ffff,
        0x1_0000_0000,
        0xffff_0000_ffff,
        // The largest sum csum.h promises to fold: 2^32 words of 0xffff.
        0xffff_u64 << 32,
    ];
    accs.extend((0..200).map(|_| rng.next_u64() >> 16));
    for acc in accs {
        assert_eq!(
            check.out(&Case::fold(acc)),
            fold(acc) as u32,
            "csum_fold({acc:#x})"
        );
    }
}

#[test]
fn apply_matches_the_field_recomputed() {
    // csum_apply(check, acc) for data whose sum moved by acc: the checksum
    // of the new data. Numbers, not packets: both sides in host order.
    let check = Check::load();
    let mut rng = Rng(0x5eed_0002);
    for i in 0..300 {
        let old_sum = 1 + rng.below(0xffff) as u16; // a sum of non-zero data
        let field = checksum(old_sum);
        let delta = match i {
            0 => 0,
            1 => 0xffff,
            2 => (!old_sum) as u64, // the new sum becomes 0xffff: the field 0
            _ => rng.next_u64() >> 24,
        };
        let want = checksum(fold(old_sum as u64 + delta));
        for (op, udp) in [(OP_APPLY, false), (OP_APPLY_UDP, true)] {
            let mut case = Case {
                op,
                acc: delta,
                ..Default::default()
            };
            // The program reads the field as packet bytes; hand it the
            // host-order number's bytes so the arithmetic is the same.
            case.check = u16::from_be_bytes(field.to_ne_bytes());
            let got = check.out(&case) as u16;
            let want = if udp && want == 0 { 0xffff } else { want };
            assert_eq!(got, want, "op {op} on {field:#x} + {delta:#x}");
        }
    }
}

/// A rewrite of a TCP or UDP packet's addresses and ports, done as the
/// data path does it (csum_delta_addr, csum_delta16, csum_fold, csum_apply,
/// csum_apply_udp), against both checksums computed anew over the
/// rewritten packet.
#[test]
fn incremental_rewrite_equals_full_recompute() {
    let check = Check::load();
    let mut rng = Rng(0x5eed_0003);
    let mut checked = 0;
    for i in 0..400 {
        let v6 = i % 2 == 1;
        let proto = if i % 4 < 2 { TCP } else { UDP };
        let alen = if v6 { 16 } else { 4 };
        let (s0, d0, s1, d1) = (
            rng.bytes(alen),
            rng.bytes(alen),
            rng.bytes(alen),
            rng.bytes(alen),
        );
        let (p0, p1) = (rng.bytes(4), rng.bytes(4));
        let seg_len = 8 + rng.below(60); // odd lengths too
        let mut seg = rng.bytes(seg_len);
        let coff = if proto == TCP { 16 } else { 6 };
        if seg.len() < coff + 2 {
            seg.resize(coff + 2, 0);
        }
        seg[..4].copy_from_slice(&p0);
        seg[coff..coff + 2].fill(0);
        // Every 8th packet: a segment whose rewritten checksum is 0 (UDP:
        // sent as 0xffff), by choosing a payload word after the rewrite.
        if i % 8 >= 6 && seg.len() >= coff + 4 {
            let mut new = seg.clone();
            new[..4].copy_from_slice(&p1);
            new[coff + 2..coff + 4].fill(0);
            let mut all = pseudo_header(&s1, &d1, proto, new.len());
            all.extend_from_slice(&new);
            let w = !sum16(&all); // makes the new sum 0xffff
            seg[coff + 2..coff + 4].copy_from_slice(&w.to_be_bytes());
        }
        let old_check = l4_checksum(&s0, &d0, proto, &seg);
        seg[coff..coff + 2].copy_from_slice(&old_check.to_be_bytes());
        let mut new_seg = seg.clone();
        new_seg[..4].copy_from_slice(&p1);
        new_seg[coff..coff + 2].fill(0);
        let want_l4 = l4_checksum(&s1, &d1, proto, &new_seg);
        // The IPv4 header's checksum: a header with the old addresses,
        // then with the new ones.
        let mut hdr = random_ipv4_header(&mut rng);
        let ip_hdr = |hdr: &mut Vec<u8>, s: &[u8], d: &[u8]| {
            hdr[12..16].copy_from_slice(&s[..4]);
            hdr[16..20].copy_from_slice(&d[..4]);
            checksum(sum16(hdr))
        };
        let old_ip = ip_hdr(&mut hdr, &s0, &d0);
        let want_ip = ip_hdr(&mut hdr, &s1, &d1);
        let case = Case {
            op: OP_REWRITE,
            family: family(alen),
            proto: proto as u32,
            check: old_check,
            check2: old_ip,
            old: addr16(&s0),
            new: addr16(&s1),
            old2: addr16(&d0),
            new2: addr16(&d1),
            ports: p0.clone().try_into().unwrap(),
            ports2: p1.clone().try_into().unwrap(),
            ..Default::default()
        };
        let out = check.run(&case);
        let got_l4 = u16::from_be_bytes(out[OUT..OUT + 2].try_into().unwrap());
        assert_eq!(
            got_l4, want_l4,
            "case {i}: v6 {v6}, proto {proto}, segment {seg_len} bytes"
        );
        if !v6 {
            let got_ip = u16::from_be_bytes(out[OUT2..OUT2 + 2].try_into().unwrap());
            assert_eq!(got_ip, want_ip, "case {i}: IPv4 header");
        }
        checked += 1;
    }
    // UDP's "no checksum" stays 0 whatever changes.
    let case = Case {
        op: OP_REWRITE,
        family: LB_AF_INET,
        proto: UDP as u32,
        check: 0,
        old: addr16(&[198, 18, 0, 1]),
        new: addr16(&[198, 18, 0, 2]),
        ..Default::default()
    };
    assert_eq!(check.out(&case), 0, "UDP without a checksum");
    assert_eq!(checked, 400);
}

#[test]
fn ipv4_header_checksum() {
    let check = Check::load();
    let mut rng = Rng(0x5eed_0004);
    for i in 0..200 {
        let mut hdr = rng.bytes(20);
        if i == 0 {
            hdr = vec![0xff; 20]; // many carries
        }
        hdr[10..12].fill(0);
        let want = checksum(sum16(&hdr));
        let got = check.out_field(&Case::ipv4_header(&hdr));
        assert_eq!(got, want, "header {hdr:02x?}");
    }
}

#[test]
fn pseudo_header_sums_for_both_families() {
    let check = Check::load();
    let mut rng = Rng(0x5eed_0005);
    for i in 0..300 {
        let v6 = i % 2 == 1;
        let alen = if v6 { 16 } else { 4 };
        let (s, d) = if i < 2 {
            (vec![0xff; alen], vec![0xff; alen])
        } else {
            (rng.bytes(alen), rng.bytes(alen))
        };
        let proto = if i % 4 < 2 { TCP } else { UDP };
        let len = match i {
            0..=3 => 0xffff,
            4..=7 => 0,
            _ => rng.below(0x10000),
        };
        let want = sum16(&pseudo_header(&s, &d, proto, len));
        let got = check.out_field(&Case::pseudo(&s, &d, proto, len));
        assert_eq!(got, want, "case {i}: v6 {v6}, len {len}");
    }
}

#[test]
fn frame_sum_over_any_length_and_offset() {
    let check = Check::load();
    let mut rng = Rng(0x5eed_0006);
    let mut lens: Vec<usize> = (0..=70).collect();
    lens.extend([
        127, 128, 129, 255, 256, 257, 511, 512, 513, 1023, 1459, 1460, 1500,
    ]);
    lens.extend((0..40).map(|_| rng.below(3000)));
    for (i, &len) in lens.iter().enumerate() {
        let lead = i % 7; // the segment at any offset, odd ones too
        let mut data = rng.bytes(lead + len + (i % 3));
        if i % 5 == 0 {
            data.fill(0xff); // carries everywhere
        }
        let seg = &data[lead..lead + len];
        let want = sum16(seg);
        let got = check.out_field(&Case::frame_sum(&data, lead, len as u32));
        assert_eq!(got, want, "{len} bytes at offset {lead}");
    }
    // Bytes that run past the frame: no sum.
    for (len, extra) in [(1, 0), (2, 1), (300, 299), (1000, 3)] {
        let case = Case::frame_sum(&vec![1; extra], 0, len);
        assert_eq!(check.out(&case), LB_CSUM_FAILED, "{len} bytes in {extra}");
    }
}

#[test]
fn byte_blocks_sum_like_the_reference() {
    let check = Check::load();
    let mut rng = Rng(0x5eed_0007);
    for len in [4usize, 8, 36, 208, 512] {
        for i in 0..20 {
            let data = if i == 0 {
                vec![0xff; len]
            } else {
                rng.bytes(len)
            };
            let got = check.out_field(&Case::bytes(&data));
            assert_eq!(got, sum16(&data), "{len} bytes");
        }
    }
}

#[test]
fn ttl_decrement_keeps_the_header_checksum_right() {
    let check = Check::load();
    let mut rng = Rng(0x5eed_0008);
    for i in 0..300 {
        let mut hdr = random_ipv4_header(&mut rng);
        hdr[8] = 1 + (i % 255) as u8; // TTL
        if i < 4 {
            // Headers whose checksum is 0 or 0xffff-adjacent after the
            // decrement: the end-around cases of RFC 1624.
            let mut after = hdr.clone();
            after[8] -= 1;
            after[18..20].fill(0);
            let w = !sum16(&after);
            after[18..20].copy_from_slice(&w.wrapping_add(i as u16).to_be_bytes());
            hdr[18..20].copy_from_slice(&after[18..20]);
        }
        let c = checksum(sum16(&hdr));
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let out = check.run(&Case::decrement_ttl(&hdr));
        let got = &out[CASE_LEN..CASE_LEN + 20];
        let mut want = hdr.clone();
        want[8] -= 1;
        want[10..12].fill(0);
        let c = checksum(sum16(&want));
        want[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(got, &want[..], "case {i}");
    }
}
