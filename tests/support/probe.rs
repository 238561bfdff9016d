//! Probes: this process's threads, TCP connections and memory (from /proc),
//! etcd's Prometheus `/metrics` over HTTP, and values scraped from
//! etcdctl's `-w fields` / `-w json` output.

use std::time::Duration;

/// Number of OS threads of this process (entries of `/proc/self/task`).
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Names of this process's OS threads, for diagnostics.
pub fn thread_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            names.push(comm.trim().to_string());
        }
    }
    names.sort();
    names
}

/// Remote ports of this process's ESTABLISHED TCP connections to 127.0.0.1
/// (from /proc/self/fd and /proc/self/net/tcp), e.g. to see which etcd
/// members a client is connected to.
pub fn established_remote_ports() -> Vec<u16> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            if let Ok(target) = std::fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(n.to_string());
                }
            }
        }
    }
    let table = std::fs::read_to_string("/proc/self/net/tcp").unwrap_or_default();
    let mut ports = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        // f[2] = remote "0100007F:PORT", f[3] = state (01 = ESTABLISHED), f[9] = inode.
        if f[3] != "01" || !inodes.contains(f[9]) {
            continue;
        }
        if let Some((ip, port)) = f[2].split_once(':') {
            if ip == "0100007F" {
                if let Ok(p) = u16::from_str_radix(port, 16) {
                    ports.push(p);
                }
            }
        }
    }
    ports.sort_unstable();
    ports
}

/// Resident set size of this process in KiB (VmRSS of /proc/self/status).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// A minimal HTTP/1.0 GET on loopback (etcd's `/metrics`).
pub(super) fn http_get(hostport: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(hostport).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// Parses `"Name" : 123` from `etcdctl -w fields` output.
pub(super) fn field_u64(out: &str, name: &str) -> Option<u64> {
    let needle = format!("\"{name}\" :");
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&needle))
        .and_then(|rest| rest.trim().parse().ok())
}

/// Parses `"name":123` from flat JSON output.
pub(super) fn json_i64(out: &str, name: &str) -> Option<i64> {
    let needle = format!("\"{name}\":");
    let start = out.find(&needle)? + needle.len();
    let rest = &out[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Parses `"name":123` (an unsigned 64-bit number) from JSON output.
pub(super) fn json_u64(out: &str, name: &str) -> Option<u64> {
    let needle = format!("\"{name}\":");
    let start = out.find(&needle)? + needle.len();
    let rest = &out[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
