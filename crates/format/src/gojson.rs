//! JSON as Go's `encoding/json` writes and reads it, where kopia's bytes must be reproduced or
//! its lenient reading matched.
//!
//! Writing: serde_json already escapes like Go except for `<`, `>`, `&`, U+2028 and U+2029, which
//! Go also escapes (HTML safety). Those characters can only occur inside strings of serde_json's
//! output, so escaping them afterwards in the whole text is exact.
//! Reading: Go matches object keys to struct fields case-insensitively (Unicode simple folding).

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{FormatError, Result};

/// Like Go's `json.Marshal`: compact, HTML-escaped.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(value)
        .map_err(|e| FormatError::malformed("JSON value", e.to_string()))?;
    Ok(escape_html(json))
}

/// Like Go's `json.Encoder` with `SetIndent("", "  ")`: two-space indent and a trailing newline.
pub fn to_vec_indented<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut json = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"  ");
    let mut ser = serde_json::Serializer::with_formatter(&mut json, formatter);
    value
        .serialize(&mut ser)
        .map_err(|e| FormatError::malformed("JSON value", e.to_string()))?;
    let mut json = escape_html(json);
    json.push(b'\n');
    Ok(json)
}

fn escape_html(json: Vec<u8>) -> Vec<u8> {
    let needs = |b: &u8| matches!(b, b'<' | b'>' | b'&' | 0xE2);
    if !json.iter().any(needs) {
        return json;
    }
    let mut out = Vec::with_capacity(json.len() + 16);
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            // U+2028 and U+2029 are E2 80 A8 / E2 80 A9 in UTF-8.
            0xE2 if json.get(i + 1) == Some(&0x80)
                && matches!(json.get(i + 2), Some(0xA8 | 0xA9)) =>
            {
                out.extend_from_slice(if json[i + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Whether a JSON object key selects the Go struct field whose JSON name is `field` (ASCII).
/// Go folds case; the only non-ASCII characters that fold onto ASCII letters are the Kelvin sign
/// (k) and the long s (s).
pub fn key_matches(key: &str, field: &str) -> bool {
    let mut key_chars = key.chars();
    for f in field.chars() {
        match key_chars.next() {
            Some(c) if c.eq_ignore_ascii_case(&f) => {}
            Some('\u{212A}') if f.eq_ignore_ascii_case(&'k') => {}
            Some('\u{017F}') if f.eq_ignore_ascii_case(&'s') => {}
            _ => return false,
        }
    }
    key_chars.next().is_none()
}

/// Go's `base64.StdEncoding` as used for `[]byte` in JSON: padding required, stray trailing
/// bits tolerated.
const GO_STD_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

pub fn encode_bytes(bytes: &[u8]) -> String {
    GO_STD_BASE64.encode(bytes)
}

/// Decodes Go's `[]byte` JSON text; Go's decoder skips CR and LF.
pub fn decode_bytes(text: &str) -> std::result::Result<Vec<u8>, base64::DecodeError> {
    if text.contains(['\r', '\n']) {
        GO_STD_BASE64.decode(text.replace(['\r', '\n'], ""))
    } else {
        GO_STD_BASE64.decode(text)
    }
}

/// Reads a JSON object into Go-struct-like fields. `what` names the object in errors.
pub(crate) struct GoObject<'a> {
    pub what: &'static str,
    pub map: &'a Map<String, Value>,
}

impl<'a> GoObject<'a> {
    /// Parses `value` as an object; Go accepts `null` as "leave everything zero".
    pub fn new(what: &'static str, value: &'a Value) -> Result<Option<Self>> {
        match value {
            Value::Object(map) => Ok(Some(GoObject { what, map })),
            Value::Null => Ok(None),
            other => Err(FormatError::malformed(
                what,
                format!("expected an object, found {}", kind(other)),
            )),
        }
    }

    /// Calls `visit(field, value)` for every key, with `field` the matched name from `fields`
    /// (or `None` for an unknown key). Later duplicates win, as in Go.
    pub fn visit(
        &self,
        fields: &[&'static str],
        mut visit: impl FnMut(Option<&'static str>, &'a str, &'a Value) -> Result<()>,
    ) -> Result<()> {
        for (key, value) in self.map {
            let field = fields
                .iter()
                .copied()
                .find(|f| f == key)
                .or_else(|| fields.iter().copied().find(|f| key_matches(key, f)));
            visit(field, key, value)?;
        }
        Ok(())
    }

    pub fn type_error(&self, field: &str, want: &str, got: &Value) -> FormatError {
        FormatError::malformed(
            self.what,
            format!("field {field:?}: expected {want}, found {}", kind(got)),
        )
    }

    /// `null` leaves the Go zero value, so it maps to `None` here.
    pub fn string(&self, field: &str, v: &Value) -> Result<Option<String>> {
        match v {
            Value::String(s) => Ok(Some(s.clone())),
            Value::Null => Ok(None),
            other => Err(self.type_error(field, "a string", other)),
        }
    }

    pub fn int(&self, field: &str, v: &Value) -> Result<Option<i64>> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.type_error(field, "a 64-bit integer", v)),
            Value::Null => Ok(None),
            other => Err(self.type_error(field, "an integer", other)),
        }
    }

    pub fn bool(&self, field: &str, v: &Value) -> Result<Option<bool>> {
        match v {
            Value::Bool(b) => Ok(Some(*b)),
            Value::Null => Ok(None),
            other => Err(self.type_error(field, "a boolean", other)),
        }
    }

    pub fn bytes(&self, field: &str, v: &Value) -> Result<Option<Vec<u8>>> {
        match v {
            Value::String(s) => decode_bytes(s).map(Some).map_err(|e| {
                FormatError::malformed(self.what, format!("field {field:?}: invalid base64: {e}"))
            }),
            Value::Null => Ok(None),
            other => Err(self.type_error(field, "a base64 string", other)),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_like_go() {
        let v = json!({"a<b": "x>y & z \u{2028}\u{2029} é \u{1} \n \u{7f}"});
        assert_eq!(
            String::from_utf8(to_vec(&v).unwrap()).unwrap(),
            r#"{"a\u003cb":"x\u003ey \u0026 z \u2028\u2029 é \u0001 \n "#.to_string() + "\u{7f}\"}"
        );
    }

    #[test]
    fn indents_like_go_encoder() {
        let v = json!({"a": "b", "c": [], "d": {}, "e": [1, 2]});
        assert_eq!(
            String::from_utf8(to_vec_indented(&v).unwrap()).unwrap(),
            "{\n  \"a\": \"b\",\n  \"c\": [],\n  \"d\": {},\n  \"e\": [\n    1,\n    2\n  ]\n}\n"
        );
    }

    #[test]
    fn keys_fold_like_go() {
        assert!(key_matches("KeyAlgo", "keyAlgo"));
        assert!(key_matches("\u{212A}eyalgo", "keyAlgo"));
        assert!(key_matches("\u{017F}ecret", "secret"));
        assert!(!key_matches("keyAlg", "keyAlgo"));
        assert!(!key_matches("keyAlgoo", "keyAlgo"));
        assert!(!key_matches("kéyAlgo", "keyAlgo"));
    }

    #[test]
    fn base64_like_go() {
        assert_eq!(encode_bytes(&[0, 1, 2, 3]), "AAECAw==");
        assert_eq!(decode_bytes("AAECAw==").unwrap(), [0, 1, 2, 3]);
        assert_eq!(decode_bytes("AAEC\r\nAw==").unwrap(), [0, 1, 2, 3]);
        assert!(
            decode_bytes("AAECAw").is_err(),
            "Go's StdEncoding requires padding"
        );
        assert_eq!(
            decode_bytes("AAECAx==").unwrap(),
            [0, 1, 2, 3],
            "stray trailing bits are ignored"
        );
        assert!(decode_bytes("AA*=").is_err());
    }
}
