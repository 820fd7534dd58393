//! The one JSON helper the benchmarks' hand-written reports need (the
//! bench crate has no serde): a string literal with its escapes.

use std::fmt::Write;

/// `s` as a JSON string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes() {
        assert_eq!(
            super::quote("a\"b\\c\n\t\u{1}"),
            "\"a\\\"b\\\\c\\n\\t\\u0001\""
        );
    }
}
