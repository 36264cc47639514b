//! Keys in URLs. A key is the percent-decoded rest of a request path, so it
//! may hold '/', spaces and any UTF-8. Decoding is strict: a '%' not followed
//! by two hex digits, or bytes that are not UTF-8, are refused rather than
//! guessed at. Query strings decode the same way, with '+' as a space.

/// Why a path or query component could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed percent-encoding at byte {0}")]
    BadEscape(usize),
    #[error("the decoded text is not valid UTF-8")]
    NotUtf8,
}

/// Decodes a path component: `%XX` escapes, nothing else special.
pub fn decode_path(raw: &str) -> Result<String, DecodeError> {
    decode(raw, false)
}

/// Decodes a query component: `%XX` escapes and `+` for space.
pub fn decode_query(raw: &str) -> Result<String, DecodeError> {
    decode(raw, true)
}

fn decode(raw: &str, plus_is_space: bool) -> Result<String, DecodeError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex(*b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(DecodeError::BadEscape(i)),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Encodes a key for a URL path: every byte but unreserved characters and
/// '/' becomes `%XX`, so `decode_path(encode_path(k)) == k` for any key.
pub fn encode_path(key: &str) -> String {
    encode(key, |b| b == b'/')
}

/// Encodes a query component (also escapes '/', '&', '=', '+').
pub fn encode_query(value: &str) -> String {
    encode(value, |_| false)
}

fn encode(text: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_escapes_strictly() {
        assert_eq!(decode_path("a%2Fb%20c").unwrap(), "a/b c");
        assert_eq!(decode_path("caf%C3%A9").unwrap(), "café");
        assert_eq!(decode_path("a+b").unwrap(), "a+b");
        assert_eq!(decode_query("a+b").unwrap(), "a b");
        assert_eq!(decode_path("%zz"), Err(DecodeError::BadEscape(0)));
        assert_eq!(decode_path("ab%4"), Err(DecodeError::BadEscape(2)));
        assert_eq!(decode_path("%"), Err(DecodeError::BadEscape(0)));
        assert_eq!(decode_path("%FF"), Err(DecodeError::NotUtf8));
    }

    proptest! {
        #[test]
        fn path_round_trips(key in "\\PC*") {
            prop_assert_eq!(decode_path(&encode_path(&key)).unwrap(), key);
        }

        #[test]
        fn query_round_trips(value in "\\PC*") {
            prop_assert_eq!(decode_query(&encode_query(&value)).unwrap(), value);
        }

        #[test]
        fn encoded_paths_are_plain_ascii(key in "\\PC*") {
            let enc = encode_path(&key);
            prop_assert!(enc.bytes().all(|b| b.is_ascii_graphic() && !b"?#%".contains(&b) || b == b'%'));
        }

        #[test]
        fn decoding_never_panics(raw in ".*") {
            let _ = decode_path(&raw);
            let _ = decode_query(&raw);
        }
    }
}
