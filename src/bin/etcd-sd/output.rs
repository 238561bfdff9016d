//! How things are printed: UTC timestamps, JSON strings, events.

use std::time::{SystemTime, UNIX_EPOCH};

use etcd_sd::Event;

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
pub fn json_array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let parts: Vec<String> = items.into_iter().map(json_string).collect();
    format!("[{}]", parts.join(","))
}

/// One watch line: text or JSON.
pub fn event_line(time: &str, event: &Event, json: bool) -> String {
    if json {
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
            json_array(event.instances.iter())
        )
    } else {
        let n = event.instances.len();
        let list: Vec<&str> = event.instances.iter().collect();
        match &event.err {
            None => format!("{time}  {n} instance{}  {}", plural(n), list.join(" "))
                .trim_end()
                .to_string(),
            Some(e) => format!(
                "{time}  error: {e}  (last known: {})",
                format!("{n} instance{}  {}", plural(n), list.join(" ")).trim_end()
            ),
        }
    }
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
    fn event_lines() {
        let ok = Event {
            instances: Instances::from_iter(["b", "a"]),
            err: None,
        };
        assert_eq!(
            event_line("T", &ok, true),
            r#"{"time":"T","instances":["a","b"],"error":null}"#
        );
        assert_eq!(event_line("T", &ok, false), "T  2 instances  a b");
        let bad = Event {
            instances: Instances::from_iter(["a"]),
            err: Some(Error::new(ErrorKind::Unavailable, "down")),
        };
        assert_eq!(
            event_line("T", &bad, true),
            r#"{"time":"T","instances":["a"],"error":{"kind":"Unavailable","message":"etcd unavailable: down"}}"#
        );
        assert!(event_line("T", &bad, false).contains("error: etcd unavailable: down"));
    }
}
