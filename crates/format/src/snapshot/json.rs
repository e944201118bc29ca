//! Go `encoding/json` emulation for the object and snapshot documents.
//!
//! Writing works on raw bytes because kopia's strings are Go strings (file names may hold invalid
//! UTF-8), and Go escapes each byte that does not start a valid UTF-8 sequence as `\ufffd`.
//! Reading goes through serde with Go's rules: keys match fields case-insensitively, unknown keys
//! are skipped, `null` leaves a field at its zero value.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};

use crate::error::{FormatError, Result};
use crate::gojson::key_matches;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string exactly as Go's HTML-safe encoder writes a Go string holding these
/// bytes.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b < 0x80 {
            if b >= 0x20 && !matches!(b, b'"' | b'\\' | b'<' | b'>' | b'&') {
                i += 1;
                continue;
            }
            out.extend_from_slice(&s[start..i]);
            match b {
                b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0C => out.extend_from_slice(b"\\f"),
                _ => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]),
            }
            i += 1;
            start = i;
            continue;
        }
        match utf8_char_len(&s[i..]) {
            None => {
                out.extend_from_slice(&s[start..i]);
                out.extend_from_slice(b"\\ufffd");
                i += 1;
                start = i;
            }
            // U+2028 and U+2029 (E2 80 A8 / E2 80 A9) break JavaScript string literals.
            Some(3)
                if s[i] == 0xE2 && s[i + 1] == 0x80 && (s[i + 2] == 0xA8 || s[i + 2] == 0xA9) =>
            {
                out.extend_from_slice(&s[start..i]);
                out.extend_from_slice(if s[i + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 3;
                start = i;
            }
            Some(n) => i += n,
        }
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// Length of the valid UTF-8 sequence at the start of `s`, or `None` if its first byte does not
/// start one.
fn utf8_char_len(s: &[u8]) -> Option<usize> {
    let head = &s[..s.len().min(4)];
    let valid = match std::str::from_utf8(head) {
        Ok(v) => v,
        Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).ok()?,
    };
    valid.chars().next().map(char::len_utf8)
}

/// The string Go's decoder returns after reading back a Go string holding `bytes`: every byte that
/// does not start a valid UTF-8 sequence becomes U+FFFD. Use it for values that must compare equal
/// to what kopia reads (e.g. a source path that is not valid UTF-8).
pub fn go_lossy_string(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.push_str(valid);
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = e.error_len().unwrap_or(after.len());
                out.extend(std::iter::repeat_n('\u{FFFD}', bad));
                rest = &after[bad..];
            }
        }
    }
    out
}

pub(crate) fn write_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    let mut pos = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[pos..]);
}

pub(crate) fn write_bool(out: &mut Vec<u8>, v: bool) {
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// Appends valid JSON text compacted and HTML-escaped, as Go does for a `json.RawMessage`.
/// Empty input is written as `null` (Go's nil `RawMessage`).
pub(crate) fn write_compact(out: &mut Vec<u8>, raw: &[u8]) {
    if raw.is_empty() {
        out.extend_from_slice(b"null");
        return;
    }
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if !in_string {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {}
                b'"' => {
                    in_string = true;
                    out.push(b);
                }
                _ => out.push(b),
            }
            continue;
        }
        match b {
            _ if escaped => {
                escaped = false;
                out.push(b);
            }
            b'\\' => {
                escaped = true;
                out.push(b);
            }
            b'"' => {
                in_string = false;
                out.push(b);
            }
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            0xE2 if raw.get(i) == Some(&0x80) && matches!(raw.get(i + 1), Some(0xA8 | 0xA9)) => {
                out.extend_from_slice(if raw[i + 1] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 2;
            }
            _ => out.push(b),
        }
    }
}

/// Checks that `raw` is one complete JSON value (what Go requires of a `RawMessage` it marshals).
pub(crate) fn validate_json(what: &'static str, raw: &[u8]) -> Result<()> {
    let mut de = serde_json::Deserializer::from_slice(raw);
    IgnoredAny::deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| json_error(what, e))
}

/// Writes a JSON object field by field; keys of Go structs are ASCII and need no escaping.
pub(crate) struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> ObjectWriter<'a> {
    pub fn begin(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, empty: true }
    }

    /// Writes `"key":` and returns the buffer for the value.
    pub fn field(&mut self, key: &str) -> &mut Vec<u8> {
        self.comma();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// Like [`field`](Self::field) for map keys, which need escaping.
    pub fn escaped_field(&mut self, key: &[u8]) -> &mut Vec<u8> {
        self.comma();
        write_str(self.out, key);
        self.out.push(b':');
        self.out
    }

    fn comma(&mut self) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// Writes a Go `map[string]string`; Go sorts keys bytewise, which a `BTreeMap` already is.
pub(crate) fn write_string_map<'m>(
    out: &mut Vec<u8>,
    map: impl IntoIterator<Item = (&'m String, &'m String)>,
) {
    let mut obj = ObjectWriter::begin(out);
    for (k, v) in map {
        write_str(obj.escaped_field(k.as_bytes()), v.as_bytes());
    }
    obj.end();
}

pub(crate) fn write_string_list(out: &mut Vec<u8>, list: &[String]) {
    out.push(b'[');
    for (i, s) in list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, s.as_bytes());
    }
    out.push(b']');
}

pub(crate) fn json_error(what: &'static str, e: serde_json::Error) -> FormatError {
    FormatError::malformed(what, e.to_string())
}

/// Finds the struct field a JSON key selects, as Go does: an exact match first, then a
/// case-insensitive one. `None` for unknown keys.
pub(crate) fn match_field(fields: &[&'static str], key: &str) -> Option<&'static str> {
    fields
        .iter()
        .copied()
        .find(|f| *f == key)
        .or_else(|| fields.iter().copied().find(|f| key_matches(key, f)))
}

/// Deserializes an object key into the field it selects, without allocating.
pub(crate) struct FieldKey(pub &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldKey {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldKey {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> std::result::Result<Self::Value, E> {
        Ok(match_field(self.0, key))
    }
}

/// A JSON array with at most `max` elements; `null` reads as `None` (Go's nil slice).
pub(crate) struct BoundedList<T> {
    max: usize,
    what: &'static str,
    /// Whether `null` elements read as `T::default()` (Go's zero value in a slice of values);
    /// otherwise they are refused (in a slice of pointers kopia would dereference nil).
    null_is_default: bool,
    elem: PhantomData<T>,
}

impl<T> BoundedList<T> {
    /// Elements are Go pointers: `null` elements are an error.
    pub fn of_pointers(max: usize, what: &'static str) -> Self {
        BoundedList {
            max,
            what,
            null_is_default: false,
            elem: PhantomData,
        }
    }

    /// Elements are Go values: `null` elements read as zero values.
    pub fn of_values(max: usize, what: &'static str) -> Self {
        BoundedList {
            max,
            what,
            null_is_default: true,
            elem: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de> + Default> DeserializeSeed<'de> for BoundedList<T> {
    type Value = Option<Vec<T>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, T: Deserialize<'de> + Default> Visitor<'de> for BoundedList<T> {
    type Value = Option<Vec<T>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an array of {}", self.what)
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let item = if self.null_is_default {
                seq.next_element::<Option<T>>()?
                    .map(Option::unwrap_or_default)
            } else {
                seq.next_element::<T>()?
            };
            let Some(item) = item else { break };
            if out.len() == self.max {
                return Err(de::Error::custom(format_args!(
                    "more than {} {}",
                    self.max, self.what
                )));
            }
            out.push(item);
        }
        Ok(Some(out))
    }
}

/// A JSON string read as raw bytes (`null` reads as empty, Go's zero string).
pub(crate) struct GoBytes(pub Vec<u8>);

impl<'de> Deserialize<'de> for GoBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(GoBytes(
            Option::<String>::deserialize(d)?
                .map(String::into_bytes)
                .unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &[u8]) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escapes_like_go() {
        assert_eq!(esc(b"a&b<c>.txt"), r#""a\u0026b\u003cc\u003e.txt""#);
        assert_eq!(
            esc(b"tab\there\nnl\x01\x7f\"q\\"),
            "\"tab\\there\\nnl\\u0001\x7f\\\"q\\\\\""
        );
        assert_eq!(esc(b"\x08\x0c\x1f\r"), r#""\b\f\u001f\r""#);
        assert_eq!(esc("\u{2028}\u{2029}é".as_bytes()), "\"\\u2028\\u2029é\"");
        assert_eq!(esc(b"bad\xffutf8"), r#""bad\ufffdutf8""#);
        assert_eq!(esc(b"\xe2\x82a"), r#""\ufffd\ufffda""#);
        assert_eq!(esc(b"\xed\xa0\x80"), r#""\ufffd\ufffd\ufffd""#);
        assert_eq!(esc(b"x\xf0\x9f\x98"), r#""x\ufffd\ufffd\ufffd""#);
        assert_eq!(esc("\u{FFFD}😀".as_bytes()), "\"\u{FFFD}😀\"");
    }

    #[test]
    fn lossy_string_replaces_each_bad_byte() {
        assert_eq!(
            go_lossy_string(b"a\xe2\x82b\xff"),
            "a\u{FFFD}\u{FFFD}b\u{FFFD}"
        );
        assert_eq!(go_lossy_string(b"\xf0\x9f\x98"), "\u{FFFD}\u{FFFD}\u{FFFD}");
        assert_eq!(go_lossy_string("ok é".as_bytes()), "ok é");
    }

    #[test]
    fn integers() {
        for v in [0, 1, -1, 42, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
    }

    #[test]
    fn compacts_raw_messages_like_go() {
        let mut out = Vec::new();
        write_compact(
            &mut out,
            " { \"a <b>\" : [ 1 , \"x\\\" & \u{2028}\" ] }\n".as_bytes(),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a \u003cb\u003e":[1,"x\" \u0026 \u2028"]}"#
        );
        let mut out = Vec::new();
        write_compact(&mut out, b"");
        assert_eq!(out, b"null");
        assert!(validate_json("x", b"{\"a\":1}").is_ok());
        assert!(validate_json("x", b"{\"a\":1} 2").is_err());
        assert!(validate_json("x", b"").is_err());
    }

    #[test]
    fn field_matching_folds_case() {
        const F: &[&str] = &["name", "obj"];
        assert_eq!(match_field(F, "NAME"), Some("name"));
        assert_eq!(match_field(F, "Obj"), Some("obj"));
        assert_eq!(match_field(F, "objx"), None);
    }
}
