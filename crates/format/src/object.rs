//! Object IDs and the indirect (multi-chunk) object index.
//!
//! An object ID is `I…` (one `I` per level of indirection), an optional `Z` (the single content
//! holds object-level compressed data, legacy repositories only) and a content ID. An indirect
//! object's ID names an index object whose bytes are
//! `{"stream":"kopia:indirect","entries":[{"s":start,"l":length,"o":"<object ID>"},…]}` + `\n`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Serialize, Serializer};

use crate::content_id::ContentId;
use crate::error::{FormatError, Result};
use crate::snapshot::json::{
    BoundedList, FieldKey, ObjectWriter, json_error, write_i64, write_str,
};

/// `stream` value of indirect index objects.
pub const INDIRECT_STREAM_TYPE: &str = "kopia:indirect";
/// Content prefix of the index objects of unprefixed objects (and of concatenations).
pub const INDIRECT_CONTENT_PREFIX: u8 = b'x';
/// Content prefix of directory listings.
pub const DIRECTORY_CONTENT_PREFIX: u8 = b'k';
/// The most index entries [`decode_indirect_index`] accepts (2^27: 16 TiB of 128 KiB chunks).
pub const MAX_INDIRECT_ENTRIES: usize = 1 << 27;

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    indirection: u8,
    compressed: bool,
    /// `None` is the empty content ID.
    content: Option<ContentId>,
}

impl ObjectId {
    /// The empty object ID (text `""`).
    pub const EMPTY: ObjectId = ObjectId {
        indirection: 0,
        compressed: false,
        content: None,
    };

    /// The object stored in one content.
    pub fn direct(content: ContentId) -> Self {
        ObjectId {
            indirection: 0,
            compressed: false,
            content: Some(content).filter(|c| !c.is_empty()),
        }
    }

    /// The object stored in one content holding object-level compressed data (`Z…`).
    pub fn compressed(content: ContentId) -> Self {
        ObjectId {
            compressed: true,
            ..ObjectId::direct(content)
        }
    }

    /// The object whose chunk list is stored in the object `index` (`I` + index).
    pub fn indirect(index: ObjectId) -> Result<Self> {
        if index.compressed {
            return Err(FormatError::malformed(
                "object ID",
                "compression and indirection are mutually exclusive",
            ));
        }
        let indirection = index
            .indirection
            .checked_add(1)
            .ok_or_else(|| FormatError::malformed("object ID", "too many levels of indirection"))?;
        Ok(ObjectId {
            indirection,
            ..index
        })
    }

    /// Parses the text form, accepting kopia's legacy `D` marker (`Dabcd` = `abcd`).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |detail: String| FormatError::malformed("object ID", format!("{s:?}: {detail}"));
        let mut rest = s;
        let mut indirection = 0u8;
        while let Some(r) = rest.strip_prefix('I') {
            indirection = indirection
                .checked_add(1)
                .ok_or_else(|| bad("too many levels of indirection".into()))?;
            rest = r;
        }
        let compressed = match rest.strip_prefix('Z') {
            Some(r) => {
                rest = r;
                true
            }
            None => false,
        };
        rest = rest.strip_prefix('D').unwrap_or(rest);
        if indirection > 0 && compressed {
            return Err(bad(
                "compression and indirection are mutually exclusive".into()
            ));
        }
        let content = ContentId::parse(rest).map_err(|e| bad(e.to_string()))?;
        Ok(ObjectId {
            indirection,
            compressed,
            content: Some(content).filter(|c| !c.is_empty()),
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == ObjectId::EMPTY
    }

    /// Levels of indirection (number of leading `I`s).
    pub fn indirection(&self) -> u8 {
        self.indirection
    }

    pub fn is_compressed(&self) -> bool {
        self.compressed
    }

    /// The content ID after the `I`s and `Z`: the object's single content when direct, else the
    /// innermost index object's content. `None` for an empty content ID.
    pub fn content_id(&self) -> Option<ContentId> {
        self.content
    }

    /// For an indirect ID, the ID of its index object (one `I` fewer).
    pub fn index_object_id(&self) -> Option<ObjectId> {
        (self.indirection > 0).then(|| ObjectId {
            indirection: self.indirection - 1,
            ..*self
        })
    }

    /// Whether the object is a directory listing: after the `I`s the content prefix is `k`.
    pub fn is_directory(&self) -> bool {
        self.content.and_then(|c| c.prefix()) == Some(DIRECTORY_CONTENT_PREFIX)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for _ in 0..self.indirection {
            f.write_str("I")?;
        }
        if self.compressed {
            f.write_str("Z")?;
        }
        match &self.content {
            Some(c) => write!(f, "{c}"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl std::str::FromStr for ObjectId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        ObjectId::parse(s)
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reads the JSON string form; `null` is the empty ID, as in kopia.
impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct IdText;
        impl<'de> Visitor<'de> for IdText {
            type Value = ObjectId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object ID string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<ObjectId, E> {
                ObjectId::parse(s).map_err(E::custom)
            }
            fn visit_none<E: de::Error>(self) -> std::result::Result<ObjectId, E> {
                Ok(ObjectId::EMPTY)
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<ObjectId, E> {
                Ok(ObjectId::EMPTY)
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<ObjectId, D::Error> {
                d.deserialize_str(IdText)
            }
        }
        d.deserialize_option(IdText)
    }
}

pub(crate) fn write_object_id(out: &mut Vec<u8>, id: &ObjectId) {
    // Object IDs are ASCII; the escaper passes them through.
    write_str(out, id.to_string().as_bytes());
}

/// One chunk of an indirect object: `length` bytes at `start`, stored as `object`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndirectEntry {
    pub start: i64,
    pub length: i64,
    pub object: ObjectId,
}

impl IndirectEntry {
    pub fn end_offset(&self) -> i64 {
        self.start.wrapping_add(self.length)
    }
}

/// Encodes the index object bytes exactly as kopia's `json.Encoder` writes them (with the trailing
/// newline). An empty list is written as `"entries":null`, as for Go's nil slice.
pub fn encode_indirect_index(entries: &[IndirectEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + entries.len() * 64);
    let mut doc = ObjectWriter::begin(&mut out);
    write_str(doc.field("stream"), INDIRECT_STREAM_TYPE.as_bytes());
    let list = doc.field("entries");
    if entries.is_empty() {
        list.extend_from_slice(b"null");
    } else {
        list.push(b'[');
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                list.push(b',');
            }
            let mut obj = ObjectWriter::begin(list);
            if e.start != 0 {
                write_i64(obj.field("s"), e.start);
            }
            if e.length != 0 {
                write_i64(obj.field("l"), e.length);
            }
            write_object_id(obj.field("o"), &e.object);
            obj.end();
        }
        list.push(b']');
    }
    doc.end();
    out.push(b'\n');
    out
}

/// Decodes an index object like kopia: the first JSON value is read (trailing bytes are ignored),
/// keys match case-insensitively, `stream` is not checked, `null` entries are zero entries.
pub fn decode_indirect_index(data: &[u8]) -> Result<Vec<IndirectEntry>> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let doc = Option::<IndirectDoc>::deserialize(&mut de)
        .map_err(|e| json_error("indirect object", e))?;
    Ok(doc.map(|d| d.0).unwrap_or_default())
}

struct IndirectDoc(Vec<IndirectEntry>);

impl<'de> Deserialize<'de> for IndirectDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IndirectDoc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an indirect object index")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<IndirectDoc, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key_seed(FieldKey(&["stream", "entries"]))? {
                    match key {
                        Some("entries") => {
                            entries = map
                                .next_value_seed(BoundedList::of_values(
                                    MAX_INDIRECT_ENTRIES,
                                    "indirect entries",
                                ))?
                                .unwrap_or_default();
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(IndirectDoc(entries))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for IndirectEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IndirectEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an indirect object entry")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<IndirectEntry, A::Error> {
                let mut e = IndirectEntry::default();
                while let Some(key) = map.next_key_seed(FieldKey(&["s", "l", "o"]))? {
                    match key {
                        Some("s") => e.start = map.next_value::<Option<i64>>()?.unwrap_or(e.start),
                        Some("l") => {
                            e.length = map.next_value::<Option<i64>>()?.unwrap_or(e.length)
                        }
                        Some("o") => e.object = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(e)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kopia_parse_vectors() {
        // kopia: repo/object/objectid_test.go, TestParseObjectID.
        for ok in [
            "Df0f0", "IDf0f0", "IIDf0f0", "Dxf0f0", "IDxf0f0", "IIDxf0f0", "",
        ] {
            assert!(ObjectId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "Dxf0f",
            "IDxf0f",
            "Da",
            "Daf0f0",
            "B!$@#$!@#$",
            "X",
            "I.",
            "I.x",
            "I.af",
            "Ix.ag",
            "Iab.",
            "I1",
            "I1,",
            "I-1,X",
            "Xsomething",
            "IZabcd",
        ] {
            assert!(ObjectId::parse(bad).is_err(), "{bad}");
        }
        // TestString.
        for (input, text) in [
            ("", ""),
            ("Dabcd", "abcd"),
            ("abcd", "abcd"),
            ("IIabcd", "IIabcd"),
            ("Zabcd", "Zabcd"),
        ] {
            assert_eq!(ObjectId::parse(input).unwrap().to_string(), text);
        }
    }

    #[test]
    fn structure() {
        let id = ObjectId::parse("IIkabcd").unwrap();
        assert_eq!(id.indirection(), 2);
        assert!(id.is_directory());
        assert_eq!(id.index_object_id().unwrap().to_string(), "Ikabcd");
        assert_eq!(id.content_id().unwrap().to_string(), "kabcd");
        assert!(ObjectId::parse("Zkabcd").unwrap().is_directory());
        assert!(!ObjectId::parse("xabcd").unwrap().is_directory());
        assert!(ObjectId::parse("").unwrap().is_empty());
        assert_eq!(ObjectId::parse("I").unwrap().to_string(), "I");

        let c = ContentId::parse("xabcd").unwrap();
        let ind = ObjectId::indirect(ObjectId::direct(c)).unwrap();
        assert_eq!(ind.to_string(), "Ixabcd");
        assert!(ObjectId::indirect(ObjectId::compressed(c)).is_err());
        assert_eq!(ObjectId::compressed(c).to_string(), "Zxabcd");

        let deep = format!("{}abcd", "I".repeat(255));
        let id = ObjectId::parse(&deep).unwrap();
        assert!(ObjectId::indirect(id).is_err());
        assert!(ObjectId::parse(&format!("I{deep}")).is_err());
    }

    #[test]
    fn indirect_index_round_trip() {
        let entries = [
            IndirectEntry {
                start: 0,
                length: 7,
                object: ObjectId::parse("abcd").unwrap(),
            },
            IndirectEntry {
                start: 7,
                length: 0,
                object: ObjectId::parse("Zabcd").unwrap(),
            },
        ];
        let bytes = encode_indirect_index(&entries);
        assert_eq!(bytes, b"{\"stream\":\"kopia:indirect\",\"entries\":[{\"l\":7,\"o\":\"abcd\"},{\"s\":7,\"o\":\"Zabcd\"}]}\n");
        assert_eq!(decode_indirect_index(&bytes).unwrap(), entries);
        assert_eq!(entries[1].end_offset(), 7);
    }

    #[test]
    fn indirect_decode_errors() {
        for bad in [
            &b""[..],
            b"[]",
            b"{\"entries\":5}",
            b"{\"entries\":[{\"o\":\"IZab\"}]}",
            b"{\"entries\":[{\"s\":1.5}]}",
            b"{",
        ] {
            assert!(
                decode_indirect_index(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
