//! The smaller promises of API.md §5.4, each against a real etcd (or, for
//! "Not etcd", a server that is not etcd): replacing a key, bounded drops,
//! sizes, and an endpoint that does not speak etcd's gRPC.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use etcd_sd::{Client, ClientOptions, ErrorKind};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A plain HTTP/1 server on loopback that answers `400 Bad Request` to
/// every connection, whatever it is sent; it runs until the test ends.
fn http1_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(secs(2)));
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request",
                );
            });
        }
    });
    format!("127.0.0.1:{}", addr.port())
}

#[test]
fn an_endpoint_that_is_not_etcd_is_unavailable_and_says_so() {
    let endpoint = http1_server();
    let options = ClientOptions {
        dial_timeout: secs(3),
        request_timeout: secs(3),
        ..Default::default()
    };
    let started = Instant::now();
    let e = Client::connect(&[endpoint.as_str()], options).expect_err("not etcd");
    assert!(started.elapsed() < secs(10), "took {:?}", started.elapsed());
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("does not speak etcd's gRPC"), "{e}");
}
