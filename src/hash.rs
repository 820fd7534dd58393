//! The flow hash, as the data path computes it (`bpf/hash.h`).
//!
//! Bob Jenkins' lookup3, in the kernel's `jhash2()` form, over the 10 words of
//! `struct lb_flow_key`. lbctl needs the same numbers as the XDP program to
//! predict where a flow lands; `tests/data/flow_hash_vectors.txt` holds
//! answers both sides are tested against.
//!
//! [`hash_bytes`] is the byte-string form (`jhash()`), used to place Maglev
//! backends. On a whole number of words it equals the word form, which the
//! tests check; its own tests pin it to lookup3's published answers.

/// Bytes in `struct lb_flow_key` (bpf/lb_abi.h): 10 words.
pub const FLOW_KEY_LEN: usize = 40;

const FLOW_KEY_WORDS: usize = FLOW_KEY_LEN / 4;
const JHASH_INITVAL: u32 = 0xdead_beef;

/// Lays out a `struct lb_flow_key`: source and destination addresses in
/// network order (IPv4 in the first 4 bytes, the rest zero), ports as host
/// numbers written big-endian, the protocol, then 3 zero bytes.
pub fn flow_key(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, proto: u8) -> [u8; 40] {
    let mut key = [0u8; FLOW_KEY_LEN];
    key[0..16].copy_from_slice(&src);
    key[16..32].copy_from_slice(&dst);
    key[32..34].copy_from_slice(&sport.to_be_bytes());
    key[34..36].copy_from_slice(&dport.to_be_bytes());
    key[36] = proto;
    key
}

/// `lb_flow_hash()` of bpf/hash.h: jhash2 over the key's 10 little-endian
/// words, three mixed blocks of three, then the tenth word and the final mix.
pub fn flow_hash(key: &[u8; 40], seed: u32) -> u32 {
    let word = |i: usize| le32(&key[4 * i..]);
    let mut s = State::new(((FLOW_KEY_WORDS as u32) << 2).wrapping_add(seed));
    for block in 0..3 {
        let i = 3 * block;
        s.add(word(i), word(i + 1), word(i + 2));
        s.mix();
    }
    s.add(word(9), 0, 0);
    s.finish()
}

/// The kernel's `jhash(data, len, seed)`: lookup3's `hashlittle()` on a
/// little-endian machine, for any length. Used to derive a Maglev backend's
/// offset and skip from its key: it is already here, well mixed, and fixed
/// forever, so tables stay the same across lbctl versions.
pub fn hash_bytes(data: &[u8], seed: u32) -> u32 {
    // The length is added as u32, as jhash's `u32 length` does; keys are short.
    let mut s = State::new((data.len() as u32).wrapping_add(seed));
    let mut rest = data;
    // More than 12 bytes left: mix a full block. Exactly 12 go to the final
    // step instead, as in lookup3, so an empty tail means an empty input.
    while rest.len() > 12 {
        let (block, tail) = rest.split_at(12);
        s.add(le32(&block[0..4]), le32(&block[4..8]), le32(&block[8..12]));
        s.mix();
        rest = tail;
    }
    if rest.is_empty() {
        return s.c;
    }
    let mut last = [0u8; 12];
    last[..rest.len()].copy_from_slice(rest);
    s.add(le32(&last[0..4]), le32(&last[4..8]), le32(&last[8..12]));
    s.finish()
}

/// The first 4 bytes as a little-endian u32.
fn le32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// lookup3's three running words.
struct State {
    a: u32,
    b: u32,
    c: u32,
}

impl State {
    /// a = b = c = JHASH_INITVAL + length in bytes + seed, passed as `extra`.
    fn new(extra: u32) -> Self {
        let init = JHASH_INITVAL.wrapping_add(extra);
        State {
            a: init,
            b: init,
            c: init,
        }
    }

    fn add(&mut self, x: u32, y: u32, z: u32) {
        self.a = self.a.wrapping_add(x);
        self.b = self.b.wrapping_add(y);
        self.c = self.c.wrapping_add(z);
    }

    /// lookup3's `mix()`: spreads three absorbed words over a, b and c.
    fn mix(&mut self) {
        let State { a, b, c } = self;
        *a = a.wrapping_sub(*c) ^ c.rotate_left(4);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a) ^ a.rotate_left(6);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b) ^ b.rotate_left(8);
        *b = b.wrapping_add(*a);
        *a = a.wrapping_sub(*c) ^ c.rotate_left(16);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a) ^ a.rotate_left(19);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b) ^ b.rotate_left(4);
        *b = b.wrapping_add(*a);
    }

    /// lookup3's `final()`: the avalanche after the last words; c is the hash.
    fn finish(mut self) -> u32 {
        let State { a, b, c } = &mut self;
        *c = (*c ^ *b).wrapping_sub(b.rotate_left(14));
        *a = (*a ^ *c).wrapping_sub(c.rotate_left(11));
        *b = (*b ^ *a).wrapping_sub(a.rotate_left(25));
        *c = (*c ^ *b).wrapping_sub(b.rotate_left(16));
        *a = (*a ^ *c).wrapping_sub(c.rotate_left(4));
        *b = (*b ^ *a).wrapping_sub(a.rotate_left(14));
        *c = (*c ^ *b).wrapping_sub(b.rotate_left(24));
        self.c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const VECTORS: &str = include_str!("../tests/data/flow_hash_vectors.txt");

    /// An address as the key stores it: IPv4 in the first 4 bytes.
    fn addr16(text: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => out[..4].copy_from_slice(&v4.octets()),
            Ok(IpAddr::V6(v6)) => out = v6.octets(),
            Err(e) => panic!("bad address {text:?}: {e}"),
        }
        out
    }

    fn hex32(text: &str) -> u32 {
        let digits = text
            .strip_prefix("0x")
            .unwrap_or_else(|| panic!("{text:?}: want 0x hex"));
        u32::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    /// One vector line: the key, the seed and the expected hash.
    fn parse_vector(line: &str) -> ([u8; 40], u32, u32) {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 7, "want 7 fields: {line:?}");
        let port = |s: &str| {
            s.parse::<u16>()
                .unwrap_or_else(|e| panic!("port {s:?}: {e}"))
        };
        let proto = f[4]
            .parse::<u8>()
            .unwrap_or_else(|e| panic!("proto {:?}: {e}", f[4]));
        let key = flow_key(addr16(f[0]), addr16(f[1]), port(f[2]), port(f[3]), proto);
        (key, hex32(f[5]), hex32(f[6]))
    }

    fn vector_lines() -> impl Iterator<Item = &'static str> {
        VECTORS
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    }

    #[test]
    fn matches_every_vector() {
        let mut failures = Vec::new();
        for line in vector_lines() {
            let (key, seed, want) = parse_vector(line);
            let got = flow_hash(&key, seed);
            if got != want {
                failures.push(format!("{line}: got {got:#010x}"));
            }
        }
        assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
        assert!(vector_lines().count() >= 20, "vector file lost its lines");
    }

    #[test]
    fn key_layout_matches_struct_lb_flow_key() {
        let key = flow_key(addr16("10.0.0.1"), addr16("2001:db8::2"), 0x1234, 80, 17);
        assert_eq!(&key[0..4], &[10, 0, 0, 1]);
        assert_eq!(&key[4..16], &[0; 12]);
        assert_eq!(&key[16..20], &[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(key[31], 2);
        assert_eq!(&key[32..34], &[0x12, 0x34], "sport big-endian");
        assert_eq!(&key[34..36], &[0, 80], "dport big-endian");
        assert_eq!(key[36], 17);
        assert_eq!(&key[37..40], &[0, 0, 0], "pad is zero");
    }

    // Answers printed by lookup3.c's own driver (driver5).
    #[test]
    fn hash_bytes_matches_lookup3_published_answers() {
        let text = b"Four score and seven years ago";
        assert_eq!(hash_bytes(text, 0), 0x1777_0551);
        assert_eq!(hash_bytes(text, 1), 0xcd62_8161);
        assert_eq!(hash_bytes(b"", 0), 0xdead_beef);
    }

    #[test]
    fn word_form_equals_byte_form_on_a_flow_key() {
        for line in vector_lines() {
            let (key, seed, _) = parse_vector(line);
            assert_eq!(flow_hash(&key, seed), hash_bytes(&key, seed), "{line}");
        }
    }

    #[test]
    fn every_field_and_the_seed_change_the_hash() {
        let base = flow_key(addr16("10.0.0.1"), addr16("10.0.0.2"), 1000, 80, 6);
        let h = flow_hash(&base, 7);
        assert_ne!(flow_hash(&base, 8), h, "seed");
        for byte in 0..37 {
            let mut k = base;
            k[byte] ^= 1;
            assert_ne!(flow_hash(&k, 7), h, "byte {byte}");
        }
    }
}
