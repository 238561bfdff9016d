//! The go-kit `sd/etcdv3` package example, ported line for line.
//!
//! Adapted from go-kit (github.com/go-kit/kit, sd/etcdv3/example_test.go),
//! MIT License, Copyright (c) 2015 Peter Bourgon.
//!
//! Run it against any etcd v3 (default `127.0.0.1:2379`):
//!
//! ```text
//! ETCD_ENDPOINTS=127.0.0.1:2379 cargo run --example quickstart
//! ```

use std::sync::Arc;
use std::time::Duration;

use etcd_sd::lb::{self, Endpoint, RoundRobin};
use etcd_sd::sd::{Closer, Endpointer, EndpointerOptions};
use etcd_sd::{BoxError, Client, ClientOptions, Instancer, Registrar, Service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Let's say this is a service that means to register itself.
    // First, we will set up some context.
    let etcd_server = std::env::var("ETCD_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into()); // "host:port" or "http://host:port", comma-separated
    let prefix = "/services/foosvc/"; // known at compile time
    let instance = "1.2.3.4:8080"; // taken from runtime or platform, somehow
    let key = format!("{prefix}{instance}"); // should be globally unique
    let value = format!("http://{instance}"); // based on our transport

    let options = ClientOptions {
        // Path to trusted ca file
        ca_cert: None,

        // Path to certificate
        cert: None,

        // Path to private key
        key: None,

        // Username if required
        username: None,

        // Password if required
        password: None,

        // If dial_timeout is zero, it defaults to 3 s
        dial_timeout: Duration::from_secs(3),

        // If dial_keep_alive is zero, it defaults to 3 s
        dial_keep_alive: Duration::from_secs(3),

        // If request_timeout is zero, it defaults to 5 s. It bounds every
        // blocking call. (go-kit's `grpc.WithBlock()` has no counterpart:
        // `Client::connect` always waits until the cluster answers, at most
        // dial_timeout.)
        request_timeout: Duration::from_secs(5),
    };

    // Build the client.
    let endpoints: Vec<&str> = etcd_server.split(',').collect();
    let client = Client::connect(&endpoints, options)?;

    // Build the registrar.
    let registrar = Registrar::new(&client, Service::new(key, value));

    // Register our instance.
    registrar.register()?;

    // At the end of our service lifecycle, for example at the end of main, we
    // should make sure to deregister ourselves. This is important! Here the
    // Registrar deregisters itself when it is dropped, also when main returns
    // early with an error; `std::process::exit` or an aborting panic skips
    // that, so we also call `deregister` explicitly at the end.

    // (Not in the go-kit example: so that this program has something to call
    // on an empty etcd, we register one barsvc instance as barsvc would.)
    let barsvc = Registrar::new(
        &client,
        Service::new("/services/barsvc/5.6.7.8:9090", "http://5.6.7.8:9090"),
    );
    barsvc.register()?;

    // It's likely that we'll also want to connect to other services and call
    // their methods. We can build an Instancer to listen for changes from etcd,
    // create Endpointer, wrap it with a load-balancer to pick a single
    // endpoint, and finally wrap it with a retry strategy to get something that
    // can be used as an endpoint directly.
    let bar_prefix = "/services/barsvc/";
    let instancer = Instancer::new(&client, bar_prefix)?;
    let endpointer = Endpointer::new(&instancer, bar_factory, EndpointerOptions::default());
    let balancer = RoundRobin::new(endpointer);
    let retry = lb::retry(3, Duration::from_secs(3), balancer);

    // And now retry can be used like any other endpoint.
    let req = ();
    let response = retry.call(req)?;
    println!("barsvc answered: {response}");

    barsvc.deregister()?;
    registrar.deregister()?;
    Ok(())
}

/// go-kit's `barFactory`: an endpoint per barsvc instance (here one that
/// answers at once, like `endpoint.Nop`) and no closer.
fn bar_factory(instance: &str) -> Result<(Endpoint<(), String>, Option<Closer>), BoxError> {
    let instance = instance.to_string();
    let endpoint: Endpoint<(), String> = Arc::new(move |()| Ok(format!("ok from {instance}")));
    Ok((endpoint, None))
}
