//! Generates the C header `etcd_sd.h` from `src/ffi/` with cbindgen, and gives
//! the shared library its soname.
//!
//! The header is written to `$OUT_DIR/etcd_sd.h` on every build; a unit test
//! (`ffi::tests::committed_header_is_current`) fails when it differs from the
//! committed `include/etcd_sd.h`. `make header` (which sets
//! `ETCD_SD_WRITE_HEADER=1`) copies it there.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-env-changed=ETCD_SD_WRITE_HEADER");

    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("set by cargo");
    let minor = env::var("CARGO_PKG_VERSION_MINOR").expect("set by cargo");
    let patch = env::var("CARGO_PKG_VERSION_PATCH").expect("set by cargo");

    // libetcd_sd.so.<major>: what programs linked against it record.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libetcd_sd.so.{major}");
    }

    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut config = cbindgen::Config::from_file(root.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    config.after_includes = Some(format!(
        "\n#define ETCD_SD_VERSION_MAJOR {major}\n\
         #define ETCD_SD_VERSION_MINOR {minor}\n\
         #define ETCD_SD_VERSION_PATCH {patch}\n\
         #define ETCD_SD_VERSION \"{major}.{minor}.{patch}\""
    ));
    let header = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen could not generate the C header from src/ffi/");

    let mut text = Vec::new();
    header.write(&mut text);
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("etcd_sd.h");
    fs::write(&out, &text).expect("write $OUT_DIR/etcd_sd.h");

    if env::var_os("ETCD_SD_WRITE_HEADER").is_some_and(|v| v == "1") {
        let committed = root.join("include/etcd_sd.h");
        if fs::read(&committed).ok().as_deref() != Some(&text[..]) {
            fs::create_dir_all(root.join("include")).expect("create include/");
            fs::write(&committed, &text).expect("write include/etcd_sd.h");
        }
    }
}
