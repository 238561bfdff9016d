//! The committed C header carries the crate's version (as rustls-ffi's
//! `rustls_header_version.rs` checks): `ETCD_SD_VERSION_MAJOR`, `_MINOR`,
//! `_PATCH` and `ETCD_SD_VERSION` must match `Cargo.toml`.

use std::collections::HashMap;

fn header_defines() -> HashMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/etcd_sd.h");
    let text = std::fs::read_to_string(path).expect("read include/etcd_sd.h");
    text.lines()
        .filter_map(|line| line.strip_prefix("#define "))
        .filter_map(|rest| {
            let mut parts = rest.splitn(2, ' ');
            Some((parts.next()?.to_string(), parts.next()?.trim().to_string()))
        })
        .collect()
}

#[test]
fn header_version_matches_cargo_toml() {
    let defines = header_defines();
    let get = |name: &str| {
        defines
            .get(name)
            .unwrap_or_else(|| panic!("include/etcd_sd.h lacks {name}"))
            .clone()
    };
    assert_eq!(
        get("ETCD_SD_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MAJOR")
    );
    assert_eq!(
        get("ETCD_SD_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(
        get("ETCD_SD_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION_PATCH")
    );
    assert_eq!(
        get("ETCD_SD_VERSION"),
        format!("\"{}\"", env!("CARGO_PKG_VERSION"))
    );
}
