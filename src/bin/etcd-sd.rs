//! `etcd-sd`: register, watch, list and pick service instances in etcd v3,
//! from the command line. Built with `--features cli`.
//!
//! ```text
//! etcd-sd register /services/foosvc/1.2.3.4:8080 http://1.2.3.4:8080 --ttl 10s
//! etcd-sd register foosvc/1.2.3.4:8080 1.2.3.4:8080 --naming --metadata '{"v":"1"}'
//! etcd-sd watch /services/foosvc/ --json
//! etcd-sd list /services/foosvc/
//! etcd-sd pick /services/foosvc/ --n 3 --random
//! ```

#[path = "etcd-sd/args.rs"]
mod args;
#[path = "etcd-sd/commands.rs"]
mod commands;
#[path = "etcd-sd/output.rs"]
mod output;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use etcd_sd::{Error, ErrorKind};

use args::{Cli, Command};

/// Why the tool stopped, and the exit code that says so.
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Exit codes, documented in `--help`.
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const TLS_OR_AUTH: u8 = 4;
    pub const NO_INSTANCES: u8 = 5;
    pub const FROM_SNAPSHOT: u8 = 6;

    /// The reader of stdout went away (`etcd-sd watch … | head -1`): not an
    /// error; the command ends quietly with status 0.
    pub fn stdout_closed() -> Failure {
        Failure::new(0, "")
    }

    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// A library error, with what was being done.
    pub fn from_error(doing: &str, e: &Error) -> Failure {
        let code = match e.kind() {
            ErrorKind::NoKey | ErrorKind::NoValue | ErrorKind::InvalidArgument => Failure::USAGE,
            ErrorKind::Unavailable | ErrorKind::Timeout => Failure::UNREACHABLE,
            ErrorKind::Tls | ErrorKind::Auth => Failure::TLS_OR_AUTH,
            ErrorKind::NoEndpoints => Failure::NO_INSTANCES,
            _ => Failure::OTHER,
        };
        Failure::new(code, format!("{doing}: {e}"))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Register {
            key,
            value,
            ttl,
            heartbeat,
            naming,
            metadata,
        } => match commands::naming_value(value, *naming, metadata.as_deref()) {
            Ok(value) => commands::register(&cli.connection, key, &value, *ttl, *heartbeat),
            Err(f) => Err(f),
        },
        Command::Watch {
            prefix,
            json,
            stats,
            snapshot,
        } => commands::watch(&cli.connection, prefix, *json, *stats, snapshot),
        Command::List {
            prefix,
            json,
            snapshot,
        } => commands::list(&cli.connection, prefix, *json, snapshot),
        Command::Pick {
            prefix,
            n,
            random,
            seed,
        } => commands::pick(&cli.connection, prefix, *n, *random, *seed),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                // Not eprintln!: a closed stderr must not panic either.
                let _ = writeln!(std::io::stderr(), "etcd-sd: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}
