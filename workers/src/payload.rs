//! A device payload read without building a JSON tree: the top-level object as (key, raw value)
//! pairs that borrow from the payload, so that the bridge and the enrichment look at the few
//! fields they need and copy the rest through byte for byte.
//!
//! Duplicate keys resolve as a JSON tree would resolve them: the last one wins.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::route::{MAX_DEVICE_ID_LEN, Reason, Rejection};

/// Above this many fields, duplicates are found with a hash map instead of pairwise.
const PAIRWISE_DEDUP_LIMIT: usize = 16;

/// The top-level JSON object of a payload.
#[derive(Debug)]
pub struct RawObject<'a> {
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawObject<'a> {
    /// Parses `payload` as a JSON object, or says why it is not one.
    pub fn parse(payload: &'a [u8]) -> Result<Self, Rejection> {
        let text = std::str::from_utf8(payload)
            .map_err(|e| Rejection::new(Reason::NotUtf8, format!("payload is not UTF-8: {e}")))?;
        match serde_json::from_str::<RawObject<'a>>(text) {
            Ok(object) => Ok(object.without_duplicates()),
            // Rare: tell "not JSON" from "JSON, but not an object".
            Err(e) => match serde_json::from_str::<&RawValue>(text) {
                Ok(value) => Err(Rejection::new(
                    Reason::NotObject,
                    format!("payload is JSON {}, not an object", json_type(value)),
                )),
                Err(_) => Err(Rejection::new(
                    Reason::NotJson,
                    format!("payload is not JSON: {e}"),
                )),
            },
        }
    }

    /// Keeps the last of each key, in the order of first appearance of the survivors.
    fn without_duplicates(mut self) -> Self {
        let n = self.fields.len();
        let keep: Vec<bool> = if n <= PAIRWISE_DEDUP_LIMIT {
            (0..n)
                .map(|i| {
                    !self.fields[i + 1..]
                        .iter()
                        .any(|(k, _)| *k == self.fields[i].0)
                })
                .collect()
        } else {
            let last: HashMap<&str, usize> = self
                .fields
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.as_ref(), i))
                .collect();
            (0..n)
                .map(|i| last[self.fields[i].0.as_ref()] == i)
                .collect()
        };
        if keep.iter().all(|k| *k) {
            return self;
        }
        let mut keep = keep.into_iter();
        self.fields.retain(|_| keep.next().unwrap_or(true));
        self
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Every field, in payload order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.fields.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// The string value of `key`, if it is a string.
    pub fn str(&self, key: &str) -> Option<Cow<'a, str>> {
        self.get(key).and_then(as_str)
    }

    /// The `device_id`, or why there is no usable one.
    pub fn device_id(&self) -> Result<Cow<'a, str>, Rejection> {
        let value = self
            .get("device_id")
            .ok_or_else(|| Rejection::new(Reason::NoDeviceId, "no device_id"))?;
        match as_str(value) {
            Some(id) if !id.is_empty() && id.len() <= MAX_DEVICE_ID_LEN => Ok(id),
            Some(id) if !id.is_empty() => Err(Rejection::new(
                Reason::NoDeviceId,
                format!("device_id is longer than {MAX_DEVICE_ID_LEN} bytes"),
            )),
            _ => Err(Rejection::new(
                Reason::NoDeviceId,
                format!("device_id is {}, not a non-empty string", json_type(value)),
            )),
        }
    }

    /// The `device_type`, or why there is none.
    pub fn device_type(&self) -> Result<Cow<'a, str>, Rejection> {
        let value = self
            .get("device_type")
            .ok_or_else(|| Rejection::new(Reason::NoDeviceType, "no device_type"))?;
        match as_str(value) {
            Some(t) if !t.is_empty() => Ok(t),
            _ => Err(Rejection::new(
                Reason::NoDeviceType,
                format!(
                    "device_type is {}, not a non-empty string",
                    json_type(value)
                ),
            )),
        }
    }
}

/// A raw value as a string, borrowed unless it contains escapes.
pub fn as_str(value: &RawValue) -> Option<Cow<'_, str>> {
    if !value.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<Key<'_>>(value.get())
        .ok()
        .map(|k| k.0)
}

/// What kind of JSON a raw value is, for error messages.
pub fn json_type(value: &RawValue) -> &'static str {
    match value.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') if value.get() == "\"\"" => "an empty string",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// A string that borrows from the input when it can.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    fields.push((k, v));
                }
                Ok(RawObject { fields })
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_borrow_and_keep_their_text() {
        let o = RawObject::parse(br#"{"a": {"x": [1, 2]}, "b":"t\u00e9", "c" :null}"#).unwrap();
        let fields: Vec<_> = o.fields().map(|(k, v)| (k, v.get())).collect();
        assert_eq!(
            fields,
            [
                ("a", r#"{"x": [1, 2]}"#),
                ("b", r#""t\u00e9""#),
                ("c", "null")
            ]
        );
        assert_eq!(o.str("b").as_deref(), Some("té"));
        assert!(o.str("a").is_none());
        assert!(matches!(
            RawObject::parse(br#"{"b":"plain"}"#).unwrap().str("b"),
            Some(Cow::Borrowed("plain"))
        ));
    }

    #[test]
    fn the_last_duplicate_wins() {
        let o = RawObject::parse(br#"{"a":1,"b":2,"a":3}"#).unwrap();
        let fields: Vec<_> = o.fields().map(|(k, v)| (k, v.get())).collect();
        assert_eq!(fields, [("b", "2"), ("a", "3")]);
        // Many fields: the hash-map path gives the same answer.
        let mut text = String::from("{");
        for i in 0..40 {
            text.push_str(&format!("\"k{}\":{i},", i % 20));
        }
        text.push_str("\"k0\":\"last\"}");
        let o = RawObject::parse(text.as_bytes()).unwrap();
        assert_eq!(o.fields().count(), 20);
        assert_eq!(o.get("k0").unwrap().get(), "\"last\"");
        assert_eq!(o.get("k19").unwrap().get(), "39");
    }

    #[test]
    fn what_is_not_an_object_says_what_it_is() {
        let reason = |p: &[u8]| RawObject::parse(p).unwrap_err();
        assert_eq!(reason(b"\xff").reason, Reason::NotUtf8);
        assert_eq!(reason(b"{").reason, Reason::NotJson);
        assert_eq!(reason(b"{} x").reason, Reason::NotJson);
        let r = reason(b"[1]");
        assert_eq!(r.reason, Reason::NotObject);
        assert_eq!(r.detail, "payload is JSON an array, not an object");
        assert_eq!(
            reason(b"\"\"").detail,
            "payload is JSON an empty string, not an object"
        );
    }

    #[test]
    fn device_id_and_type_rules() {
        let id = |p: &str| {
            RawObject::parse(p.as_bytes())
                .unwrap()
                .device_id()
                .map(Cow::into_owned)
        };
        assert_eq!(id(r#"{"device_id":"b-1"}"#).unwrap(), "b-1");
        assert_eq!(id("{}").unwrap_err().detail, "no device_id");
        assert_eq!(
            id(r#"{"device_id":7}"#).unwrap_err().detail,
            "device_id is a number, not a non-empty string"
        );
        assert_eq!(
            id(r#"{"device_id":""}"#).unwrap_err().detail,
            "device_id is an empty string, not a non-empty string"
        );
        let long = format!(r#"{{"device_id":"{}"}}"#, "x".repeat(MAX_DEVICE_ID_LEN + 1));
        assert!(id(&long).unwrap_err().detail.contains("longer than"));
        let ty = |p: &str| {
            RawObject::parse(p.as_bytes())
                .unwrap()
                .device_type()
                .map(Cow::into_owned)
        };
        assert_eq!(ty(r#"{"device_type":"m"}"#).unwrap(), "m");
        assert_eq!(
            ty(r#"{"device_type":null}"#).unwrap_err().reason,
            Reason::NoDeviceType
        );
    }
}
