//! The command line: flags mirroring `ClientOptions`, and the subcommands.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Output:
  watch, list and pick print one instance per line (watch: after a line with the
  time and the count, indented by two spaces). So that each stays on one
  line, values are escaped: a backslash is printed as \\\\, newline as \\n,
  carriage return as \\r, tab as \\t, any other ASCII control character or
  DEL as \\xNN (e.g. \\x1b), and other control characters or line separators
  as \\u{NNNN}. With --json, values are JSON strings instead.
  Values in etcd's naming format ({\"Op\":0,\"Addr\":...,\"Metadata\":...}, as Go's
  endpoints.Manager and `register --naming` write them) are shown decoded, as
  addr=ADDR metadata=JSON (metadata=null when there is none); with --json, as
  {\"addr\":ADDR,\"metadata\":JSON,\"value\":VALUE}. Other values are shown as they are.
  A closed stdout (e.g. `etcd-sd watch /p/ | head -1`) ends the command
  quietly, with status 0.

Exit codes:
  0  success (register and watch: stopped by Ctrl-C or SIGTERM, or stdout closed)
  1  other error
  2  bad usage: unknown flag, malformed value, endpoint, key or value
  3  etcd unreachable or too slow (--dial-timeout, --request-timeout)
  4  TLS or authentication failure (unreadable or wrong certificates, bad password)
  5  no instance under the prefix (pick)
  6  etcd unreachable; list printed the instances of its --snapshot file instead";

/// Register, watch, list and pick service instances in etcd v3.
#[derive(Parser, Debug)]
#[command(name = "etcd-sd", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach etcd (the fields of `ClientOptions`).
#[derive(Args, Debug)]
pub struct Connection {
    /// etcd endpoints, comma-separated: host:port, http://host:port or https://host:port
    #[arg(
        long,
        env = "ETCD_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Vec<String>,

    /// CA certificate (PEM) that signed etcd's certificate; turns TLS on
    #[arg(long = "cacert", value_name = "FILE", global = true)]
    pub tls_ca_cert: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS; needs --key
    #[arg(long = "cert", value_name = "FILE", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --cert
    // Not named `key`: the positional KEY of `register` has that id.
    #[arg(long = "key", value_name = "FILE", global = true)]
    pub tls_key: Option<PathBuf>,

    /// etcd user name, or NAME:PASSWORD
    #[arg(long, value_name = "NAME", global = true)]
    pub user: Option<String>,

    /// Password of --user (prefer the environment variable: it stays out of `ps`)
    #[arg(
        long,
        env = "ETCD_SD_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD",
        global = true
    )]
    pub password: Option<String>,

    /// How long connecting may take (e.g. 3s, 500ms)
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration, global = true)]
    pub dial_timeout: Duration,

    /// Bound of every other request to etcd
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, global = true)]
    pub request_timeout: Duration,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Register KEY with VALUE and keep it registered until Ctrl-C or SIGTERM,
    /// printing every state change; then deregister
    Register {
        /// The key, e.g. /services/foosvc/1.2.3.4:8080
        key: String,
        /// The value, e.g. http://1.2.3.4:8080
        value: String,
        /// How long etcd keeps the key without a heartbeat (whole seconds are
        /// granted, rounded up; at least 3 × heartbeat if not above it)
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        ttl: Duration,
        /// How often the registration is refreshed (at least 500ms)
        #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
        heartbeat: Duration,
        /// Write etcd's naming format, which Go's endpoints.Manager and gRPC's
        /// etcd:///TARGET resolver read: VALUE is then the address (e.g.
        /// 10.0.0.1:8080) and the value written is
        /// {"Op":0,"Addr":VALUE,"Metadata":...}. Use a KEY of TARGET/<anything>
        #[arg(long)]
        naming: bool,
        /// With --naming: the endpoint's metadata, as JSON (e.g.
        /// '{"version":"1.2"}'). gRPC-Go dialers up to 1.33 (etcd 3.4's
        /// resolver) crash on an object or array: give them a string
        #[arg(long, value_name = "JSON", requires = "naming")]
        metadata: Option<String>,
    },
    /// Print the instances under PREFIX, then every change, with a timestamp,
    /// until Ctrl-C or SIGTERM: a line with the time and the count, then one
    /// line per instance (escaped, see `etcd-sd --help`)
    Watch {
        /// The prefix, e.g. /services/foosvc/ (end it with /)
        prefix: String,
        /// One JSON object per line: {"time":..., "instances":[...], "error":...}
        #[arg(long)]
        json: bool,
        /// Also print the client's counters to stderr every 5 seconds (one
        /// JSON object per line with --json)
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        snapshot: SnapshotArgs,
    },
    /// Print the values under PREFIX, one per line (escaped, see `etcd-sd --help`),
    /// in key order
    List {
        /// The prefix, e.g. /services/foosvc/
        prefix: String,
        /// Print one JSON array instead
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        snapshot: SnapshotArgs,
    },
    /// Pick instances under PREFIX as a client-side load balancer would
    Pick {
        /// The prefix, e.g. /services/foosvc/
        prefix: String,
        /// How many picks to print, one per line
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        n: u64,
        /// Pick at random instead of round robin
        #[arg(long)]
        random: bool,
        /// Seed of --random, for a repeatable sequence
        #[arg(long, requires = "random")]
        seed: Option<u64>,
    },
}

/// A snapshot file: kept up to date from etcd, used when etcd is down.
#[derive(Args, Debug, Clone)]
pub struct SnapshotArgs {
    /// Keep the instances in FILE while etcd answers, and start from it when
    /// etcd is unreachable (watch: printed as an error event until etcd
    /// answers; list: printed with a note on stderr and exit status 6)
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// A snapshot written longer ago than this is ignored
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration, requires = "snapshot")]
    pub snapshot_max_age: Duration,
}

/// Parses `1.5s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 3s, 500ms, 1.5s)"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn flags_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "etcd-sd",
            "pick",
            "/p/",
            "--n",
            "3",
            "--random",
            "--seed",
            "7",
            "--endpoints",
            "a:1,b:2",
        ])
        .unwrap();
        assert_eq!(cli.connection.endpoints, ["a:1", "b:2"]);
        // The service key and the TLS key flag do not mix.
        let cli = Cli::try_parse_from(["etcd-sd", "register", "/k", "v", "--key", "f"]).unwrap();
        assert_eq!(cli.connection.tls_key, Some(PathBuf::from("f")));
        match cli.command {
            Command::Register { key, value, .. } => {
                assert_eq!((key.as_str(), value.as_str()), ("/k", "v"))
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["etcd-sd", "pick", "/p/", "--n", "0"]).is_err());
        assert!(Cli::try_parse_from(["etcd-sd", "pick", "/p/", "--seed", "1"]).is_err());
    }
}
