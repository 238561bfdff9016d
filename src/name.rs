//! [`Name`]: one instance string, stored once and shared by every snapshot,
//! with a NUL byte after it so that the C API lends it in place.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::ffi::c_char;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::chunks::Keyed;

/// A shared instance string. The allocation holds the string and then a NUL,
/// which is not part of the value: [`as_str`](Name::as_str) leaves it out,
/// [`as_c_ptr`](Name::as_c_ptr) lends it to C. A value with a NUL of its own
/// reads in C as cut at that byte, as any C string would.
///
/// Compared, ordered and hashed as its string, so maps keyed by `Name` are
/// looked up by `&str`.
#[derive(Clone)]
pub(crate) struct Name(Arc<str>);

impl Name {
    pub(crate) fn new(value: &str) -> Name {
        let mut s = String::with_capacity(value.len() + 1);
        s.push_str(value);
        Name::from_string(s)
    }

    /// Like [`new`](Name::new), reusing `value`'s buffer on the way.
    pub(crate) fn from_string(mut value: String) -> Name {
        value.push('\0');
        Name(Arc::from(value))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0[..self.0.len() - 1]
    }

    /// The value as a NUL-terminated C string, valid while this `Name` (or
    /// any clone of it) lives.
    pub(crate) fn as_c_ptr(&self) -> *const c_char {
        self.0.as_ptr().cast()
    }

    /// The bytes [`as_c_ptr`](Name::as_c_ptr) points at: the value and the
    /// NUL after it.
    #[cfg(test)]
    fn bytes_with_nul(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Keyed for Name {
    fn key(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that `Borrow<str>` lookups agree.
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::CStr;

    #[test]
    fn value_without_the_nul_and_c_string_with_it() {
        for v in ["", "http://10.0.0.1:8080", "ünï\u{1F600}"] {
            let n = Name::new(v);
            assert_eq!(n.as_str(), v);
            assert_eq!(n.as_c_ptr().cast::<u8>(), n.bytes_with_nul().as_ptr());
            let c = CStr::from_bytes_until_nul(n.bytes_with_nul()).unwrap();
            assert_eq!(c.to_str().unwrap(), v);
        }
        // An inner NUL cuts the C view, not the Rust one.
        let n = Name::new("a\0b");
        assert_eq!(n.as_str(), "a\0b");
        let c = CStr::from_bytes_until_nul(n.bytes_with_nul()).unwrap();
        assert_eq!(c.to_bytes(), b"a");
    }

    #[test]
    fn ordered_and_looked_up_as_the_string() {
        let mut names: Vec<Name> = ["b", "a\0b", "a", "ab"]
            .iter()
            .map(|s| Name::new(s))
            .collect();
        names.sort();
        let sorted: Vec<&str> = names.iter().map(Name::as_str).collect();
        assert_eq!(sorted, ["a", "a\0b", "ab", "b"]);
        let map: HashMap<Name, u32> = names.into_iter().zip(0..).collect();
        assert_eq!(map.get("ab"), Some(&2));
        assert_eq!(map.get("zz"), None);
        assert_eq!(format!("{:?}", Name::new("x")), "\"x\"");
    }
}
