//! How xenstore-utils show and take values that are not plain text:
//! printable ASCII but `\` as is; `\t`, `\n`, `\r`, `\\`; bytes below 8 as
//! three octal digits (`\001`); any other byte as `\xNN`. Reading back,
//! `\` takes `t n r \`, up to three octal digits, `x` and up to two hex
//! digits, and any other character as itself; a lone `\` at the end is a
//! nul byte.

/// Shows `value` as xenstore-utils print it.
pub fn escape(value: &[u8]) -> String {
    let mut s = String::with_capacity(value.len());
    for &c in value {
        match c {
            b' '..=b'~' if c != b'\\' => s.push(c as char),
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\\' => s.push_str("\\\\"),
            0..=7 => s.push_str(&format!("\\{c:03o}")),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

/// Takes a value written as xenstore-utils take it.
pub fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    let digits = |from: usize, max: usize, radix: u32| -> (u32, usize) {
        let mut v = 0u32;
        let mut n = 0;
        while n < max {
            match text
                .get(from + n)
                .and_then(|&c| (c as char).to_digit(radix))
            {
                Some(d) => v = v * radix + d,
                None => break,
            }
            n += 1;
        }
        (v, n)
    };
    while i < text.len() {
        let c = text[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match text.get(i) {
            None => out.push(0),
            Some(b't') => {
                out.push(b'\t');
                i += 1;
            }
            Some(b'n') => {
                out.push(b'\n');
                i += 1;
            }
            Some(b'r') => {
                out.push(b'\r');
                i += 1;
            }
            Some(b'0'..=b'7') => {
                let (v, n) = digits(i, 3, 8);
                out.push(v as u8);
                i += n;
            }
            Some(b'x') => {
                let (v, n) = digits(i + 1, 2, 16);
                out.push(v as u8);
                i += 1 + n;
            }
            Some(&other) => {
                out.push(other);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_matches_xenstore_utils() {
        // Seen from Debian's xenstore-read against C xenstored.
        assert_eq!(
            escape(b"a\tb\x01c\x7fd\\e\nf\x7fg\t"),
            "a\\tb\\001c\\x7fd\\\\e\\nf\\x7fg\\t"
        );
        assert_eq!(escape(b"x\x01\x7f\xffy"), "x\\001\\x7f\\xffy");
    }

    #[test]
    fn unescaping_matches_xenstore_utils() {
        // Seen from Debian's xenstore-write against C xenstored.
        let cases: [(&[u8], &[u8]); 8] = [
            (b"a\\qb", b"aqb"),
            (b"tail\\", b"tail\0"),
            (b"\\0z", b"\0z"),
            (b"\\8", b"8"),
            (b"\\x4", b"\x04"),
            (b"\\x4g", b"\x04g"),
            (b"\\1234", b"S4"),
            (b"\\a\\b\\f\\v", b"abfv"),
        ];
        for (input, want) in cases {
            assert_eq!(unescape(input), want, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn escape_then_unescape_is_identity() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unescape(escape(&all).as_bytes()), all);
    }
}
