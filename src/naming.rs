//! etcd's own naming format, which Go services and gRPC clients read.
//!
//! Go's `go.etcd.io/etcd/client/v3/naming/endpoints` (`clientv3/naming/endpoints`
//! in etcd 3.4) keeps each endpoint of a service called `TARGET` under a key
//! `TARGET/<anything>`, whose value is the JSON text
//!
//! ```text
//! {"Op":0,"Addr":"10.0.0.1:8080","Metadata":{"version":"1.2"}}
//! ```
//!
//! and gRPC's etcd resolver (`etcd:///TARGET`) dials the `Addr` of every key
//! under `TARGET`, handing `Metadata` to the balancer. An [`Endpoint`] is one
//! such value: register [`Endpoint::encode`] with a [`Registrar`] at
//! `TARGET/<anything>`, and Go programs find it; read what Go programs
//! register with an [`Instancer`] on `TARGET/` and [`Endpoint::decode`] each
//! instance.
//!
//! ```
//! use etcd_sd::naming::Endpoint;
//!
//! let e = Endpoint::new("10.0.0.1:8080").with_metadata(r#"{"version":"1.2"}"#)?;
//! assert_eq!(e.encode(), r#"{"Op":0,"Addr":"10.0.0.1:8080","Metadata":{"version":"1.2"}}"#);
//! assert_eq!(Endpoint::decode(&e.encode())?, e);
//! # Ok::<(), etcd_sd::Error>(())
//! ```
//!
//! # The rules, and how they follow Go
//! * **Keys.** Go's `Manager` only writes keys that start with `TARGET/`, and
//!   reads every key that starts with `TARGET` (its watch has no final `/`).
//!   Register at `TARGET/<anything>` (e.g. `TARGET/10.0.0.1:8080`) and watch
//!   `TARGET/`.
//! * **`Addr`** must be a JSON string; a value without it (absent or `null`)
//!   is refused by [`Endpoint::decode`] (Go would read such a value as an
//!   endpoint with an empty address). An empty string is accepted.
//! * **`Op`** may be absent; when present it must be `null` or an integer
//!   from 0 to 255 (Go's `uint8`: other values make Go skip the key), and its
//!   value is otherwise **ignored**, as Go ignores it: a key that is present
//!   is an endpoint, whatever its `Op`, and an endpoint that goes is a key
//!   that is deleted (Go's `DeleteEndpoint` deletes the key, it never writes
//!   `"Op":1`). So an Instancer that sees a value with `"Op":1` still lists
//!   it, and `decode` returns the endpoint, as Go's `List` and watch do.
//! * **Field names** are matched as Go's `encoding/json` does: the exact
//!   name first, else ignoring ASCII case (`"addr"` is `Addr`); a field
//!   given twice takes its last value, except that a later `null` `Addr` or
//!   `Op` leaves the earlier value (Go's rule for `null`), while a later
//!   `null` `Metadata` clears it. Unknown top-level fields are ignored.
//! * **`Metadata`** is any JSON value; `decode` keeps its text exactly as
//!   written (field order, unknown fields, number formats such as `1e400` or
//!   `12345678901234567890`, `\u00e9` escapes and whitespace inside it), so
//!   nothing is lost by passing it on. Absent or `null` is `None`.
//!   [`Endpoint::with_metadata`] is stricter, so that Go finds what it
//!   makes: it refuses what Go's `encoding/json` cannot read, a number
//!   beyond `float64` (`1e400`) or nesting deeper than 9999 levels (Go's
//!   Manager and resolver skip such an endpoint entirely). Two
//!   [`Endpoint`]s compare equal when their texts are equal: `{"a": 1}` and
//!   `{"a":1}` are different texts of the same JSON value (parse them with
//!   a JSON library to compare values).
//! * **Whitespace.** [`Endpoint::with_metadata`] stores the text with the
//!   whitespace around it removed (none is inside a value's text as
//!   `decode` sees it either) and keeps the whitespace inside it, and turns
//!   `"null"` into `None`; so `decode(&e.encode()) == e` for every endpoint
//!   it makes.
//! * **Always valid JSON.** [`Endpoint::encode`] writes `"Op":0`, the
//!   address as a JSON string and the metadata text (or `null`). Should
//!   `metadata` have been set directly to text that is not JSON, it is
//!   written as a JSON *string* holding that text, so that the value stays
//!   valid JSON for every reader.
//! * **Size.** etcd refuses a request over 1.5 MiB (its default
//!   `--max-request-bytes`); `with_metadata` refuses metadata that could
//!   not fit, and a [`Registrar`] refuses a longer key and value at once
//!   with `InvalidArgument`.
//! * **Not JSON.** A value that is not a JSON object, or that is not valid
//!   JSON, is `InvalidArgument`. A lone surrogate escape such as `"\ud800"`
//!   is kept as written inside metadata; in `Addr` it is refused (Go reads it
//!   as U+FFFD). An Instancer on a prefix that holds other values
//!   too lists them all: `decode` tells which are naming endpoints.
//!
//! # gRPC-Go 1.33 and object metadata
//! Go dialers built with etcd 3.4's resolver (`clientv3/naming/resolver`)
//! and gRPC-Go up to 1.33 (Debian 12's versions) **crash** when an endpoint's
//! metadata is a JSON object or array: the resolver passes it, as a Go map or
//! slice, in `resolver.Address.Metadata`, and the `round_robin` balancer
//! uses addresses as map keys (`panic: runtime error: hash of unhashable
//! type map[string]interface {}`; `tests/naming_go.rs` shows it). For such
//! dialers, leave the metadata out or make it a string, number or boolean.
//! Newer gRPC-Go versions ignore `Metadata`.
//!
//! [`Registrar`]: crate::Registrar
//! [`Instancer`]: crate::Instancer

use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::options::MAX_KEY_AND_VALUE;

/// An endpoint in etcd's own naming format, as Go's
/// `go.etcd.io/etcd/client/v3/naming/endpoints` (and gRPC's etcd resolver)
/// store it: the value is JSON `{"Op":0,"Addr":"10.0.0.1:8080","Metadata":...}`.
///
/// See the [module documentation](self) for the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The address a gRPC client dials, e.g. `10.0.0.1:8080`.
    pub addr: String,
    /// The metadata, as JSON text (`None`: no metadata, written as `null`).
    pub metadata: Option<String>,
}

impl Endpoint {
    /// An endpoint at `addr`, without metadata.
    pub fn new(addr: impl Into<String>) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            metadata: None,
        }
    }

    /// The same endpoint with `json` as its metadata: the text as given,
    /// without the whitespace around it; `"null"` means no metadata.
    ///
    /// # Errors
    /// `InvalidArgument` when `json` is not one valid JSON value, is
    /// longer than etcd's request limit allows, or is JSON that Go's
    /// `encoding/json` refuses to read (a number beyond `float64`, such as
    /// `1e400`, or nesting deeper than 9999 levels): Go's Manager and
    /// resolver would skip the endpoint.
    pub fn with_metadata(self, json: impl Into<String>) -> Result<Endpoint> {
        let json = json.into();
        if json.len() > MAX_KEY_AND_VALUE {
            return Err(Error::invalid(format!(
                "naming metadata of {} bytes is over etcd's request limit ({MAX_KEY_AND_VALUE} bytes for key and value)",
                json.len()
            )));
        }
        let raw: &RawValue = serde_json::from_str(&json)
            .map_err(|e| Error::invalid(format!("naming metadata is not valid JSON: {e}")))?;
        let text = raw.get();
        go_can_read(text).map_err(Error::invalid)?;
        let metadata = if text == "null" {
            None
        } else if text.len() == json.len() {
            Some(json)
        } else {
            Some(text.to_string())
        };
        Ok(Endpoint { metadata, ..self })
    }

    /// The etcd value: `{"Op":0,"Addr":"...","Metadata":...}`, always valid
    /// JSON (see the [module documentation](self)).
    pub fn encode(&self) -> String {
        let addr = serde_json::to_string(&self.addr).expect("a string is always JSON");
        let mut out =
            String::with_capacity(40 + addr.len() + self.metadata.as_ref().map_or(4, String::len));
        out.push_str("{\"Op\":0,\"Addr\":");
        out.push_str(&addr);
        out.push_str(",\"Metadata\":");
        match &self.metadata {
            None => out.push_str("null"),
            Some(text) => match serde_json::from_str::<&RawValue>(text) {
                Ok(raw) => out.push_str(raw.get()),
                Err(_) => {
                    out.push_str(&serde_json::to_string(text).expect("a string is always JSON"))
                }
            },
        }
        out.push('}');
        out
    }

    /// Reads an etcd value written by Go's `endpoints.Manager`, by
    /// [`Endpoint::encode`] or by anything else that follows the format.
    ///
    /// # Errors
    /// `InvalidArgument` when `value` is not a JSON object, has no string
    /// `Addr`, or has an `Op` that is not an integer from 0 to 255.
    pub fn decode(value: &str) -> Result<Endpoint> {
        let mut de = serde_json::Deserializer::from_str(value);
        let fields = de
            .deserialize_map(FieldsVisitor)
            .and_then(|fields| de.end().map(|()| fields))
            .map_err(|e| Error::invalid(format!("not a naming endpoint: {e}")))?;
        let mut addr: Option<String> = None;
        let mut metadata: Option<String> = None;
        for (name, raw) in &fields {
            let text = raw.get();
            match Field::of(name) {
                Some(Field::Addr) => {
                    if text == "null" {
                        continue;
                    }
                    let s: String = serde_json::from_str(text).map_err(|_| {
                        Error::invalid(format!(
                            "not a naming endpoint: \"Addr\" must be a JSON string, not {}",
                            shorten(text)
                        ))
                    })?;
                    addr = Some(s);
                }
                Some(Field::Op) if text != "null" && text.parse::<u8>().is_err() => {
                    return Err(Error::invalid(format!(
                        "not a naming endpoint: \"Op\" must be an integer from 0 to 255, not {}",
                        shorten(text)
                    )));
                }
                Some(Field::Metadata) => {
                    metadata = (text != "null").then(|| text.to_string());
                }
                Some(Field::Op) | None => {}
            }
        }
        match addr {
            Some(addr) => Ok(Endpoint { addr, metadata }),
            None => Err(Error::invalid(
                "not a naming endpoint: no \"Addr\" (a JSON string)",
            )),
        }
    }
}

/// How deep Go's `encoding/json` nests at most (its `maxNestingDepth`),
/// counting the endpoint's own object: metadata may nest one less.
const GO_MAX_METADATA_DEPTH: usize = 10_000 - 1;

/// Whether Go's `encoding/json` reads `text` (valid JSON), as the metadata
/// of an endpoint, into an `interface{}`: Go refuses, and so its Manager and
/// resolver skip the whole endpoint, when a number does not fit a `float64`
/// (`1e400`) or the nesting is deeper than its limit. Checked without
/// recursion, so any depth is an answer, never a stack overflow.
fn go_can_read(text: &str) -> std::result::Result<(), String> {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string: its escapes are valid JSON, so a
                // backslash always has a character after it.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > GO_MAX_METADATA_DEPTH {
                    return Err(format!(
                        "naming metadata nests deeper than Go's encoding/json reads ({GO_MAX_METADATA_DEPTH} levels): Go programs would skip the endpoint"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let number = &text[start..=i];
                if !number.parse::<f64>().is_ok_and(f64::is_finite) {
                    return Err(format!(
                        "naming metadata holds the number {}, which does not fit Go's float64: Go programs would skip the endpoint",
                        shorten(number)
                    ));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The fields of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Op,
    Addr,
    Metadata,
}

impl Field {
    /// The field a JSON name sets, matched as Go's `encoding/json` does:
    /// exactly, else ignoring ASCII case (none of the three names holds a
    /// letter for which Go's folding goes beyond ASCII, `k` or `s`).
    fn of(name: &str) -> Option<Field> {
        const FIELDS: [(&str, Field); 3] = [
            ("Op", Field::Op),
            ("Addr", Field::Addr),
            ("Metadata", Field::Metadata),
        ];
        FIELDS
            .iter()
            .find(|(n, _)| *n == name)
            .or_else(|| FIELDS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)))
            .map(|&(_, f)| f)
    }
}

/// At most 64 bytes of `text`, for error messages.
fn shorten(text: &str) -> String {
    if text.len() <= 64 {
        return text.to_string();
    }
    let mut end = 64;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The top-level fields of a JSON object in the order written, duplicates
/// included, each value as its text.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut fields = Vec::new();
        while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
            fields.push(entry);
        }
        Ok(fields)
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Err(E::custom("null, not a JSON object"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn meta(e: &Endpoint) -> Option<&str> {
        e.metadata.as_deref()
    }

    fn invalid(value: &str) -> String {
        let e = Endpoint::decode(value).expect_err(value);
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{value}: {e}");
        e.to_string()
    }

    #[test]
    fn encode_writes_gos_layout() {
        assert_eq!(
            Endpoint::new("10.0.0.1:8080").encode(),
            r#"{"Op":0,"Addr":"10.0.0.1:8080","Metadata":null}"#
        );
        let e = Endpoint::new("h:1")
            .with_metadata(r#"{"b":1,"a":[2]}"#)
            .unwrap();
        assert_eq!(
            e.encode(),
            r#"{"Op":0,"Addr":"h:1","Metadata":{"b":1,"a":[2]}}"#
        );
        // Quotes, backslashes and control characters in the address are escaped.
        let odd = Endpoint::new("a\"b\\c\nd\u{0}é");
        let v: serde_json::Value = serde_json::from_str(&odd.encode()).unwrap();
        assert_eq!(v["Addr"], "a\"b\\c\nd\u{0}é");
        assert_eq!(Endpoint::decode(&odd.encode()).unwrap(), odd);
    }

    #[test]
    fn decode_reads_gos_values() {
        // What Go's Manager writes (json.Marshal of internal.Update).
        let e = Endpoint::decode(r#"{"Op":0,"Addr":"127.0.0.1:1","Metadata":null}"#).unwrap();
        assert_eq!(e, Endpoint::new("127.0.0.1:1"));
        let e = Endpoint::decode(r#"{"Op":0,"Addr":"a:1","Metadata":{"x":"y"}}"#).unwrap();
        assert_eq!(meta(&e), Some(r#"{"x":"y"}"#));
        // Op and Metadata may be absent.
        assert_eq!(
            Endpoint::decode(r#"{"Addr":"a:1"}"#).unwrap(),
            Endpoint::new("a:1")
        );
        // An empty address is an address.
        assert_eq!(Endpoint::decode(r#"{"Addr":""}"#).unwrap().addr, "");
    }

    #[test]
    fn op_is_checked_then_ignored() {
        for op in ["0", "1", "255", "null"] {
            let e = Endpoint::decode(&format!(r#"{{"Op":{op},"Addr":"a:1"}}"#)).unwrap();
            assert_eq!(e, Endpoint::new("a:1"), "Op {op}");
        }
        for op in ["256", "-1", "1.0", "1e0", "\"0\"", "true", "[]", "{}"] {
            let msg = invalid(&format!(r#"{{"Op":{op},"Addr":"a:1"}}"#));
            assert!(msg.contains("\"Op\""), "{msg}");
        }
    }

    #[test]
    fn addr_must_be_a_string() {
        for v in [
            r#"{}"#,
            r#"{"Op":0}"#,
            r#"{"Addr":null}"#,
            r#"{"Metadata":{"Addr":"a:1"}}"#,
        ] {
            assert!(invalid(v).contains("no \"Addr\""), "{v}");
        }
        for v in [r#"{"Addr":1}"#, r#"{"Addr":["a"]}"#, r#"{"Addr":true}"#] {
            assert!(invalid(v).contains("must be a JSON string"), "{v}");
        }
    }

    #[test]
    fn not_json_or_not_an_object() {
        for v in [
            "",
            "http://10.0.0.1:8080",
            "10.0.0.1:8080",
            "null",
            "[]",
            "\"a\"",
            "1",
            r#"{"Addr":"a:1""#,
            r#"{"Addr":"a:1"} x"#,
            r#"{"Addr":"a:1"}{}"#,
            r#"{"Addr":"a:1",}"#,
            r#"{'Addr':'a:1'}"#,
        ] {
            invalid(v);
        }
        // Whitespace around the object is fine.
        assert_eq!(
            Endpoint::decode(" \n{ \"Addr\" : \"a:1\" }\t").unwrap(),
            Endpoint::new("a:1")
        );
    }

    #[test]
    fn unknown_fields_are_ignored_and_names_fold_case() {
        let e = Endpoint::decode(
            r#"{"Key":"k","Addr":"a:1","Extra":{"deep":[1,2]},"Metadata":1,"op2":"x"}"#,
        )
        .unwrap();
        assert_eq!(e, Endpoint::new("a:1").with_metadata("1").unwrap());
        // Go's encoding/json matches names ignoring case.
        let e = Endpoint::decode(r#"{"op":1,"addr":"a:1","METADATA":"m"}"#).unwrap();
        assert_eq!(e.addr, "a:1");
        assert_eq!(meta(&e), Some(r#""m""#));
        // But not names that only look alike.
        invalid(r#"{"Address":"a:1"}"#);
        invalid(r#"{"Addr ":"a:1"}"#);
    }

    #[test]
    fn duplicate_fields_last_wins_as_in_go() {
        let e = Endpoint::decode(r#"{"Addr":"a:1","addr":"b:2"}"#).unwrap();
        assert_eq!(e.addr, "b:2");
        // An exact name later wins over a folded one earlier, and vice versa.
        let e = Endpoint::decode(r#"{"ADDR":"a:1","Addr":"b:2","addr":"c:3"}"#).unwrap();
        assert_eq!(e.addr, "c:3");
        // null leaves a string field as it was (Go's rule)...
        let e = Endpoint::decode(r#"{"Addr":"a:1","Addr":null}"#).unwrap();
        assert_eq!(e.addr, "a:1");
        // ...and clears an interface{} one.
        let e = Endpoint::decode(r#"{"Addr":"a:1","Metadata":{"x":1},"Metadata":null}"#).unwrap();
        assert_eq!(e.metadata, None);
        let e = Endpoint::decode(r#"{"Addr":"a:1","Metadata":1,"Metadata":2}"#).unwrap();
        assert_eq!(meta(&e), Some("2"));
        // Duplicate keys inside the metadata are kept as written.
        let e = Endpoint::decode(r#"{"Addr":"a:1","Metadata":{"k":1,"k":2}}"#).unwrap();
        assert_eq!(meta(&e), Some(r#"{"k":1,"k":2}"#));
    }

    #[test]
    fn metadata_text_is_kept_as_written() {
        for m in [
            r#"{"z":1,"a":2,"m":{"y":[1,2,{"x":null}]}}"#,
            "12345678901234567890123456789",
            "-0.000000000000000000001e-400",
            "1e400",
            "1.0",
            "1E+2",
            r#""caf\u00e9 \ud83d\ude00 \u0000""#,
            r#""ünï©ødé ☃""#,
            r#"{ "a" : 1 ,	"b" :[ ] }"#,
            "true",
            "[]",
            "\"\"",
        ] {
            let value = format!(r#"{{"Op":0,"Addr":"a:1","Metadata":{m}}}"#);
            let e = Endpoint::decode(&value).unwrap();
            assert_eq!(meta(&e), Some(m), "{value}");
            assert_eq!(e.encode(), value);
            if m == "1e400" {
                // Kept by decode, but Go cannot read it: with_metadata refuses.
                continue;
            }
            let made = Endpoint::new("a:1").with_metadata(m).unwrap();
            assert_eq!(made, e);
        }
        // Whitespace around the metadata is not part of its text.
        let e = Endpoint::decode("{\"Addr\":\"a:1\",\"Metadata\": \n {\"a\": 1} \t}").unwrap();
        assert_eq!(meta(&e), Some(r#"{"a": 1}"#));
        // Equality is on the text: the same JSON value written otherwise differs.
        assert_ne!(
            Endpoint::new("a:1").with_metadata(r#"{"a": 1}"#).unwrap(),
            Endpoint::new("a:1").with_metadata(r#"{"a":1}"#).unwrap()
        );
    }

    #[test]
    fn lone_surrogates() {
        // Kept as written in the metadata (Go accepts them too)...
        let value = r#"{"Addr":"a:1","Metadata":"\ud800"}"#;
        let e = Endpoint::decode(value).unwrap();
        assert_eq!(meta(&e), Some(r#""\ud800""#));
        assert_eq!(Endpoint::decode(&e.encode()).unwrap(), e);
        assert!(Endpoint::new("a").with_metadata(r#""\ud800""#).is_ok());
        // ...but an address must be text that Rust can hold.
        invalid(r#"{"Addr":"\udc00"}"#);
    }

    #[test]
    fn with_metadata_rules() {
        let e = Endpoint::new("a:1");
        assert_eq!(
            meta(&e.clone().with_metadata(" \n{\"a\": 1}\t ").unwrap()),
            Some("{\"a\": 1}")
        );
        assert_eq!(e.clone().with_metadata("null").unwrap().metadata, None);
        assert_eq!(e.clone().with_metadata(" null ").unwrap().metadata, None);
        for bad in [
            "",
            " ",
            "{",
            "{\"a\":1}}",
            "{} {}",
            "nul",
            "'a'",
            "NaN",
            "01",
            "{a:1}",
        ] {
            let err = e.clone().with_metadata(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.to_string().contains("not valid JSON"), "{err}");
        }
        // Too large for etcd.
        let huge = format!("\"{}\"", "x".repeat(MAX_KEY_AND_VALUE));
        let err = e.clone().with_metadata(huge).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("request limit"), "{err}");
        // Large but fitting is fine, and round-trips.
        let big = format!("\"{}\"", "x".repeat(1_000_000));
        let e = e.with_metadata(big).unwrap();
        assert_eq!(Endpoint::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn encode_is_valid_json_whatever_the_text() {
        for text in ["", "{", "not json", "{\"a\":1} {}", " {\"a\":1} ", "null"] {
            let e = Endpoint {
                addr: "a:1".into(),
                metadata: Some(text.into()),
            };
            let encoded = e.encode();
            let v: serde_json::Value = serde_json::from_str(&encoded).expect(&encoded);
            assert_eq!(v["Addr"], "a:1");
            let back = Endpoint::decode(&encoded).unwrap();
            match text {
                // Valid JSON: written without the whitespace around it.
                " {\"a\":1} " => assert_eq!(meta(&back), Some("{\"a\":1}")),
                "null" => assert_eq!(back.metadata, None),
                // Not JSON: written as a JSON string holding the text.
                _ => assert_eq!(v["Metadata"], text, "{encoded}"),
            }
        }
    }

    /// Mutated values: decode never panics, and whatever it accepts
    /// encodes to valid JSON that decodes to the same endpoint.
    #[test]
    fn mutated_values_never_panic_and_round_trip() {
        const PIECES: &[&str] = &[
            "{", "}", "[", "]", "\"", ":", ",", " ", "\n", "\\", "\\u00e9", "\\ud800", "0", "1",
            "-", ".", "e", "null", "true", "Addr", "addr", "Op", "Metadata", "é", "\u{2028}",
            "\u{0}",
        ];
        let seeds = [
            r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"a":[1,2.5e3,"x"],"b":null}}"#,
            r#"{"Addr":"a","Metadata":"s"}"#,
            r#"{"op":1,"addr":"b","metadata":[true,{}]}"#,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut accepted = 0;
        for i in 0..20_000 {
            let mut v: Vec<char> = seeds[i % seeds.len()].chars().collect();
            for _ in 0..1 + next(3) {
                let at = next(v.len() + 1);
                match next(3) {
                    0 if at < v.len() => {
                        v.remove(at);
                    }
                    _ => {
                        let piece = PIECES[next(PIECES.len())];
                        for (k, c) in piece.chars().enumerate() {
                            v.insert(at + k, c);
                        }
                    }
                }
            }
            let value: String = v.into_iter().collect();
            let Ok(e) = Endpoint::decode(&value) else {
                continue;
            };
            accepted += 1;
            let encoded = e.encode();
            serde_json::from_str::<serde_json::Value>(&encoded)
                .or_else(|_| {
                    serde_json::from_str::<&RawValue>(&encoded).map(|_| serde_json::Value::Null)
                })
                .unwrap_or_else(|err| panic!("{value:?} encoded to {encoded:?}: {err}"));
            assert_eq!(Endpoint::decode(&encoded).unwrap(), e, "{value:?}");
            if let Some(m) = e.metadata.as_ref().filter(|m| go_can_read(m).is_ok()) {
                assert_eq!(e.clone().with_metadata(m.clone()).unwrap(), e);
            }
        }
        assert!(
            accepted > 100,
            "only {accepted} mutated values were endpoints"
        );
    }

    #[test]
    fn with_metadata_refuses_what_go_cannot_read() {
        // Go's json.Unmarshal into interface{} fails on these, and its
        // Manager and resolver then skip the endpoint.
        for m in [
            "1e400",
            "-1e400",
            "1.7976931348623159e308",
            r#"{"a":[1,{"b":1E+999}]}"#,
            &format!("1{}", "0".repeat(400)),
        ] {
            let err = Endpoint::new("a:1").with_metadata(m).expect_err(m);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.to_string().contains("float64"), "{err}");
        }
        // Go reads these (the largest float64, underflow to 0, big integers).
        for m in [
            "1.7976931348623157e308",
            "1.7976931348623158e308",
            "1e-400",
            "-0",
            "123456789012345678901234567890",
            r#""1e400 \" [[[ {{{""#,
        ] {
            Endpoint::new("a:1").with_metadata(m).expect(m);
        }
        // Go's nesting limit is 10000, the endpoint's object included.
        let nest = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        Endpoint::new("a:1").with_metadata(nest(9999)).unwrap();
        for d in [10_000, 100_000, 700_000] {
            let err = Endpoint::new("a:1").with_metadata(nest(d)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.to_string().contains("deeper"), "{err}");
        }
        // decode still keeps whatever was written.
        let e =
            Endpoint::decode(&format!(r#"{{"Addr":"a","Metadata":{}}}"#, nest(20_000))).unwrap();
        assert_eq!(e.metadata.as_deref().map(str::len), Some(40_000));
    }

    /// Nesting as deep as etcd's request limit allows is an answer, never
    /// a stack overflow, even on a small stack.
    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        let worker = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let d = MAX_KEY_AND_VALUE / 2 - 64;
                let deep = format!("{}{}", "[".repeat(d), "]".repeat(d));
                let open = "[{\"a\":".repeat(d / 6);
                for m in [deep.as_str(), open.as_str()] {
                    assert!(Endpoint::new("a").with_metadata(m).is_err());
                    let value = format!(r#"{{"Addr":"a","X":{m},"Metadata":{m}}}"#);
                    let _ = Endpoint::decode(&value);
                    let e = Endpoint {
                        addr: "a".into(),
                        metadata: Some(m.to_string()),
                    };
                    let _ = Endpoint::decode(&e.encode());
                }
            })
            .unwrap();
        worker.join().expect("no panic, no overflow");
    }

    #[test]
    fn round_trip() {
        let cases = [
            Endpoint::new(""),
            Endpoint::new("10.0.0.1:8080"),
            Endpoint::new("[::1]:50051").with_metadata("{}").unwrap(),
            Endpoint::new("unix:///tmp/s.sock")
                .with_metadata(r#"[1,"two",{"3":[4.5e-6]}]"#)
                .unwrap(),
            Endpoint::new("ünï:1").with_metadata(r#""\u2028""#).unwrap(),
        ];
        for e in cases {
            assert_eq!(Endpoint::decode(&e.encode()).unwrap(), e, "{}", e.encode());
        }
    }
}
