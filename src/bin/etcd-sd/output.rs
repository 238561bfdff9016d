//! How things are printed: UTC timestamps, JSON strings, values on one
//! line, events; and stdout, which the reader may close at any time.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use etcd_sd::naming::Endpoint;
use etcd_sd::Event;

use crate::Failure;

/// Prints `text` and a newline on stdout. A reader that went away (`| head
/// -1`) ends the command quietly ([`Failure::stdout_closed`]); any other
/// write error is a failure.
pub fn line(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::stdout_closed(),
            _ => Failure::new(Failure::OTHER, format!("cannot write to stdout: {e}")),
        })
}

/// Each of `lines` with [`line`].
pub fn lines<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Result<(), Failure> {
    lines.into_iter().try_for_each(|l| line(l.as_ref()))
}

/// `s` on one line, unambiguously: a backslash becomes `\\`, newline `\n`,
/// carriage return `\r`, tab `\t`, any other ASCII control character or DEL
/// `\xNN`, and any other control character or line or paragraph separator
/// `\u{NNNN}`. Everything else is printed as it is.
pub fn one_line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// The current time as RFC 3339 UTC with milliseconds,
/// e.g. `2024-05-01T12:34:56.789Z`.
pub fn now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    timestamp(since.as_secs(), since.subsec_millis())
}

fn timestamp(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON array of strings.
#[cfg(test)]
pub fn json_array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let parts: Vec<String> = items.into_iter().map(json_string).collect();
    format!("[{}]", parts.join(","))
}

/// How an instance is shown on one line: a value in etcd's naming format as
/// `addr=ADDR metadata=JSON` (`metadata=null` without), any other value as
/// it is; escaped with [`one_line`] either way.
pub fn instance_line(value: &str) -> Cow<'_, str> {
    match Endpoint::decode(value) {
        Ok(e) => {
            let metadata = e.metadata.as_deref().map(compact_json);
            let text = format!(
                "addr={} metadata={}",
                e.addr,
                metadata.as_deref().unwrap_or("null")
            );
            Cow::Owned(one_line(&text).into_owned())
        }
        Err(_) => one_line(value),
    }
}

/// An instance as JSON: a value in etcd's naming format as
/// `{"addr":ADDR,"metadata":JSON,"value":VALUE}` (the metadata as written,
/// on one line, lone surrogate escapes as `\ufffd`), any other value as a
/// JSON string.
pub fn instance_json(value: &str) -> String {
    match Endpoint::decode(value) {
        Ok(e) => format!(
            "{{\"addr\":{},\"metadata\":{},\"value\":{}}}",
            json_string(&e.addr),
            e.metadata
                .as_deref()
                .map(|m| no_lone_surrogates(&compact_json(m)).into_owned())
                .as_deref()
                .unwrap_or("null"),
            json_string(value)
        ),
        Err(_) => json_string(value),
    }
}

/// JSON text with every lone surrogate escape (`\ud800` not followed by a
/// low one, or a lone `\udc00`) in its strings replaced by `\ufffd`, as Go
/// reads it: strict parsers (jq, serde_json) refuse lone surrogates.
fn no_lone_surrogates(text: &str) -> Cow<'_, str> {
    if !text.contains("\\u") {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let hex = |at: usize| -> Option<u16> {
        (bytes.get(at) == Some(&b'\\') && bytes.get(at + 1) == Some(&b'u'))
            .then(|| text.get(at + 2..at + 6))
            .flatten()
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let mut out = String::new();
    let (mut i, mut copied, mut in_string) = (0, 0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                i += match hex(i) {
                    Some(0xd800..=0xdbff) if matches!(hex(i + 6), Some(0xdc00..=0xdfff)) => 12,
                    Some(0xd800..=0xdfff) => {
                        out.push_str(&text[copied..i]);
                        out.push_str("\\ufffd");
                        copied = i + 6;
                        6
                    }
                    Some(_) => 6,
                    None => 2,
                };
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// A JSON array of instances, each as [`instance_json`].
pub fn instances_json<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let parts: Vec<String> = items.into_iter().map(instance_json).collect();
    format!("[{}]", parts.join(","))
}

/// Valid JSON text on one line: the whitespace between tokens removed, and
/// U+2028 / U+2029 inside strings escaped. Everything else (numbers, key
/// order, escapes) stays as written.
fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            match c {
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                c => out.push(c),
            }
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// The lines of one watch event: one JSON object, or a header line with the
/// time and the count (and the error, if any) followed by one line per
/// instance, indented by two spaces, as [`instance_line`] shows it.
pub fn event_lines(time: &str, event: &Event, json: bool) -> Vec<String> {
    if json {
        return vec![event_json(time, event)];
    }
    let n = event.instances.len();
    let count = format!("{n} instance{}", plural(n));
    let header = match &event.err {
        None => format!("{time}  {count}"),
        Some(e) => format!(
            "{time}  error: {}  (last known: {count})",
            one_line(&e.to_string())
        ),
    };
    std::iter::once(header)
        .chain(
            event
                .instances
                .iter()
                .map(|i| format!("  {}", instance_line(i))),
        )
        .collect()
}

/// One watch event as a JSON object on one line.
fn event_json(time: &str, event: &Event) -> String {
    let error = match &event.err {
        None => "null".to_string(),
        Some(e) => format!(
            "{{\"kind\":{},\"message\":{}}}",
            json_string(&format!("{:?}", e.kind())),
            json_string(&e.to_string())
        ),
    };
    format!(
        "{{\"time\":{},\"instances\":{},\"error\":{error}}}",
        json_string(time),
        instances_json(event.instances.iter())
    )
}

/// The client's counters on one line of stderr: `TIME stats name=value ...`,
/// or one JSON object with `--json`. A closed stderr is ignored.
pub fn stats_line(time: &str, s: &etcd_sd::Stats, json: bool) {
    let fields = [
        ("connected", u64::from(s.connected)),
        ("registrars", s.registrars),
        ("registered", s.registered),
        ("registrations", s.registrations),
        ("reregistrations", s.reregistrations),
        ("leases_lost", s.leases_lost),
        ("instancers", s.instancers),
        ("watch_resumes", s.watch_resumes),
        ("rereads", s.rereads),
        ("events", s.events),
        ("callback_panics", s.callback_panics),
    ];
    let line = if json {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| match *k {
                "connected" => format!("\"{k}\":{}", *v == 1),
                _ => format!("\"{k}\":{v}"),
            })
            .collect();
        format!(
            "{{\"time\":{},\"stats\":{{{}}}}}",
            json_string(time),
            body.join(",")
        )
    } else {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{time}  stats {}", body.join(" "))
    };
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_sd::{Error, ErrorKind, Instances};

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(timestamp(1_714_566_896, 789), "2024-05-01T12:34:56.789Z");
        assert_eq!(now().len(), 24);
    }

    #[test]
    fn json_escaping() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(json_string("héllo"), "\"héllo\"");
        assert_eq!(json_array(["x", "y"]), r#"["x","y"]"#);
    }

    #[test]
    fn values_on_one_line() {
        assert_eq!(one_line("plain value"), "plain value");
        assert!(matches!(one_line("plain"), Cow::Borrowed(_)));
        assert_eq!(one_line("a\nb\rc\td"), r"a\nb\rc\td");
        assert_eq!(one_line("back\\slash"), r"back\\slash");
        assert_eq!(one_line("\u{1b}[0m\u{7f}\u{0}"), r"\x1b[0m\x7f\x00");
        assert_eq!(one_line("\u{85}\u{2028}é"), r"\u{0085}\u{2028}é");
        // Unambiguous: an escaped newline and a backslash followed by n differ.
        assert_ne!(one_line("\n"), one_line("\\n"));
    }

    #[test]
    fn naming_values_are_decoded() {
        let v = r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{ "v" : [1, 2.50],"s":"a b\u2028"}}"#;
        assert_eq!(
            instance_line(v),
            r#"addr=10.0.0.1:80 metadata={"v":[1,2.50],"s":"a b\\u2028"}"#
        );
        assert_eq!(
            instance_json(v),
            format!(
                r#"{{"addr":"10.0.0.1:80","metadata":{{"v":[1,2.50],"s":"a b\u2028"}},"value":{}}}"#,
                json_string(v)
            )
        );
        let none = r#"{"Op":0,"Addr":"h:1","Metadata":null}"#;
        assert_eq!(instance_line(none), "addr=h:1 metadata=null");
        assert!(instance_json(none).starts_with(r#"{"addr":"h:1","metadata":null,"value":"#));
        // A raw U+2028 and newlines inside the metadata stay on one line.
        let raw = "{\"Addr\":\"a\\nb\",\"Metadata\":[\"x\u{2028}y\",\n1]}";
        assert_eq!(instance_line(raw), r#"addr=a\nb metadata=["x\\u2028y",1]"#);
        assert_eq!(
            instance_json(raw),
            format!(
                r#"{{"addr":"a\nb","metadata":["x\u2028y",1],"value":{}}}"#,
                json_string(raw)
            )
        );
        // Other values as they are.
        assert_eq!(instance_line("http://x\n"), r"http://x\n");
        assert_eq!(instance_json("http://x"), r#""http://x""#);
        assert_eq!(instance_json(r#"{"Addr":1}"#), json_string(r#"{"Addr":1}"#));
        assert_eq!(instances_json(["a", none]).matches("\"addr\"").count(), 1);
        // Escapes inside strings are kept, quotes inside strings do not end them.
        assert_eq!(
            compact_json(r#"{ "a\" b" : "c\\" , "d":1 }"#),
            r#"{"a\" b":"c\\","d":1}"#
        );
    }

    #[test]
    fn json_lines_hold_no_lone_surrogates() {
        // jq and serde_json refuse lone surrogates: --json writes U+FFFD
        // for them, as Go reads them; pairs and other escapes stay.
        let v = r#"{"Addr":"a","Metadata":{"\ud800k":["\udc00","\ud83d\ude00","\\ud800","\ud800\u0041","x\ud800"]}}"#;
        let json = instance_json(v);
        let parsed: serde_json::Value = serde_json::from_str(&json).expect(&json);
        assert_eq!(
            parsed["metadata"],
            serde_json::json!({"\u{fffd}k": ["\u{fffd}", "😀", "\\ud800", "\u{fffd}A", "x\u{fffd}"]})
        );
        // The raw value is still there as written.
        assert_eq!(parsed["value"], v);
        assert!(matches!(
            no_lone_surrogates(r#"{"a":"\u00e9"}"#),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn event_lines_text_and_json() {
        let ok = Event {
            instances: Instances::from_iter(["b", "a\nc"]),
            err: None,
        };
        assert_eq!(
            event_lines("T", &ok, true),
            [r#"{"time":"T","instances":["a\nc","b"],"error":null}"#]
        );
        assert_eq!(
            event_lines("T", &ok, false),
            ["T  2 instances", r"  a\nc", "  b"]
        );
        let empty = Event {
            instances: Instances::default(),
            err: None,
        };
        assert_eq!(event_lines("T", &empty, false), ["T  0 instances"]);
        let bad = Event {
            instances: Instances::from_iter(["a"]),
            err: Some(Error::new(ErrorKind::Unavailable, "down\nhard")),
        };
        assert_eq!(
            event_lines("T", &bad, true),
            [
                r#"{"time":"T","instances":["a"],"error":{"kind":"Unavailable","message":"etcd unavailable: down\nhard"}}"#
            ]
        );
        assert_eq!(
            event_lines("T", &bad, false),
            [
                r"T  error: etcd unavailable: down\nhard  (last known: 1 instance)",
                "  a"
            ]
        );
    }
}
