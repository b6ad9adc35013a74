//! `corelog serve`: the engine as a Kafka-protocol broker.
//!
//! Opens the data directory, starts one shard per core, each accepting connections on
//! `--listen` or every `--listeners` entry (SO_REUSEPORT; TLS, SASL and ACLs per the
//! `security` crate), and runs until SIGTERM or SIGINT, then shuts down
//! cleanly: in-flight appends finish, every partition is synced and closed, and the
//! clean-shutdown marker is written.

use anyhow::{bail, Context, Result};
use engine::{Engine, EngineConfig, FlushMode};
use metrics_exporter_prometheus::Matcher;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags of `corelog serve` (DESIGN.md's CLI contract).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address every shard accepts plaintext Kafka connections on (shorthand for
    /// `--listeners PLAINTEXT://ADDR`).
    #[arg(long, default_value = "127.0.0.1:9092", conflicts_with = "listeners")]
    pub listen: SocketAddr,
    /// Kafka-style listeners, e.g. `PLAINTEXT://127.0.0.1:9092,SASL_SSL://0.0.0.0:9093`
    /// (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL). With any listener but PLAINTEXT,
    /// every request is authorized by ACLs and none matching means deny.
    #[arg(long)]
    pub listeners: Option<String>,
    /// The server certificate chain (PEM) of SSL and SASL_SSL listeners.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates: SSL listeners then require
    /// one (mutual TLS), and its subject becomes the principal (`User:CN=…`).
    #[arg(long)]
    pub tls_client_ca: Option<PathBuf>,
    /// Principals allowed everything, e.g. `User:admin,User:ops`.
    #[arg(long, value_delimiter = ',')]
    pub super_users: Vec<String>,
    /// Allow PLAINTEXT or SASL_PLAINTEXT listeners on non-loopback addresses.
    #[arg(long)]
    pub allow_insecure_listener: bool,
    /// Offer SASL PLAIN on SASL_PLAINTEXT listeners too (passwords in the clear).
    #[arg(long)]
    pub sasl_plain_without_tls: bool,
    /// Shard threads (default: all cores).
    #[arg(long)]
    pub cores: Option<usize>,
    /// Durability of acknowledged appends: group, always or os.
    #[arg(long, default_value_t = FlushMode::Group)]
    pub flush: FlushMode,
    /// Delete sealed segments older than this (e.g. 7d, 12h, 30m, 90s; 0 keeps forever).
    #[arg(long, default_value = "7d")]
    pub retention: String,
    /// Roll segments at this size in bytes.
    #[arg(long, default_value_t = engine::log::SEGMENT_BYTES_DEFAULT)]
    pub segment_bytes: u64,
    /// Keep about this many of each partition's newest log bytes in the page cache
    /// and drop older ones once written (0 leaves the cache to the kernel).
    #[arg(long, default_value_t = engine::log::CACHE_WINDOW_BYTES_DEFAULT)]
    pub cache_window_bytes: u64,
    /// Write zeros ahead of each partition's tail while its appends are synced one by
    /// one, so their syncs skip the file system's journal commit (true or false; see
    /// docs/ENGINE.md for what it does to latency).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub preallocate: bool,
    /// Largest request frame accepted, in bytes.
    #[arg(long, default_value_t = engine::MAX_REQUEST_BYTES_DEFAULT)]
    pub max_request_bytes: usize,
    /// Serve Prometheus metrics (text format) at http://ADDR/metrics.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Partitions of topics created on first use (0 disables auto-creation).
    #[arg(long, default_value_t = 1)]
    pub default_partitions: u32,
    /// Never delete a segment a `corelog land` on this data dir has not landed yet.
    #[arg(long)]
    pub retain_until_landed: bool,
    /// Run the stream queries declared in this directory's `*.toml` files.
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Request bytes all connections together may hold in memory, and separately
    /// response bytes; a connection waits for budget instead of allocating.
    #[arg(long, default_value_t = engine::MEMORY_BUDGET_BYTES_DEFAULT)]
    pub memory_budget_bytes: usize,
    /// Connections open at once; more are closed when accepted.
    #[arg(long, default_value_t = engine::MAX_CONNECTIONS_DEFAULT)]
    pub max_connections: usize,
    /// Partitions the broker holds at most (lowered to what the descriptor limit
    /// allows); creating topics past it is refused.
    #[arg(long, default_value_t = engine::MAX_PARTITIONS_DEFAULT)]
    pub max_partitions: u32,
    /// Keep a consumer group's committed offsets this long after it last had a member
    /// or committed (Kafka's offsets.retention.minutes; e.g. 7d, 12h; 0 keeps forever).
    #[arg(long, default_value = "7d")]
    pub offsets_retention: String,
}

/// Histogram buckets for every latency metric, 50 µs to 5 s.
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0, 5.0];

/// Histogram buckets for ring occupancy (entries found per drain).
pub const RING_ENTRIES_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Parses `7d`, `12h`, `30m`, `90s`, `250ms` (or `0`) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64> {
    engine::query::parse_duration_ms(text).map_err(anyhow::Error::msg)
}

/// Runs the broker until a termination signal.
pub fn run(args: &ServeArgs) -> Result<()> {
    let retention_ms = parse_duration_ms(&args.retention)?;
    let mut config = EngineConfig::new(&args.data_dir);
    config.flush = args.flush;
    config.listeners = match &args.listeners {
        Some(text) => security::parse_listeners(text).map_err(anyhow::Error::msg)?,
        None => {
            vec![security::Listener { protocol: security::SecurityProtocol::Plaintext, address: args.listen }]
        }
    };
    config.security = security::SecurityConfig {
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        tls_client_ca: args.tls_client_ca.clone(),
        super_users: args.super_users.clone(),
        plain_without_tls: args.sasl_plain_without_tls,
        allow_insecure_listener: args.allow_insecure_listener,
    };
    let listeners: Vec<String> = config.listeners.iter().map(|l| l.to_string()).collect();
    config.max_request_bytes = args.max_request_bytes;
    config.auto_create_partitions = (args.default_partitions > 0).then_some(args.default_partitions);
    config.log.retention_ms = (retention_ms > 0).then_some(retention_ms);
    config.log.segment_bytes = args.segment_bytes;
    config.log.cache_window_bytes = args.cache_window_bytes;
    config.log.preallocate = args.preallocate;
    config.retain_until_landed = args.retain_until_landed;
    config.memory_budget_bytes = args.memory_budget_bytes;
    config.max_connections = args.max_connections;
    config.max_partitions = args.max_partitions;
    config.offsets_retention_ms = match parse_duration_ms(&args.offsets_retention)? {
        0 => u64::MAX,
        ms => ms as u64,
    };
    if let Some(cores) = args.cores {
        if cores == 0 {
            bail!("--cores must be positive");
        }
        config.shards = cores;
    }
    if let Some(address) = args.metrics {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS_SECONDS)
            .context("configuring metrics")?
            .set_buckets_for_metric(Matcher::Suffix("_entries".into()), &RING_ENTRIES_BUCKETS)
            .context("configuring metrics")?
            .install()
            .with_context(|| format!("serving metrics on {address}"))?;
    }
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
            .context("installing signal handlers")?;
    if let Some(dir) = &args.queries {
        config.queries = engine::query::load_dir(dir)?;
    }
    let queries = config.queries.clone();
    let engine = Engine::open(config).context("starting the engine")?;
    eprintln!(
        "corelog serve: {} shards listening on {}, data in {}, flush={}",
        engine.shard_count(),
        listeners.join(","),
        args.data_dir.display(),
        args.flush
    );
    let _loaders = crate::deny::start_parquet_loaders(&engine, &queries);
    for query in &queries {
        eprintln!(
            "corelog serve: query {} over {} -> {}, {}",
            query.name,
            query.source,
            query.agg_topic(),
            query.decisions_topic()
        );
    }
    let signal = signals.forever().next();
    eprintln!("corelog serve: signal {signal:?}, shutting down");
    drop(_loaders);
    engine.shutdown().context("shutting down")?;
    eprintln!("corelog serve: clean shutdown");
    Ok(())
}
