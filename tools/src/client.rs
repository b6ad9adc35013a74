//! `corelog produce` and `corelog consume`: line-oriented Kafka clients built on
//! `rdkafka` (librdkafka), so they work against corelog or any Kafka-compatible broker.
//!
//! `produce` sends one record per stdin line (acks=all, idempotent), keyed by a JSON
//! field when `--key-field` names one; `consume` prints one value per line, from
//! `earliest`, `latest` or an offset, either on assigned partitions or as a member of
//! a consumer group (`--group`, committing what it printed).

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

/// How a client tool reaches a broker that authenticates: librdkafka's settings from
/// Kafka's vocabulary. The password is read from a file (first line), never taken on
/// the command line where `ps` would show it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientSecurity {
    /// PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.
    #[arg(long, default_value = "PLAINTEXT")]
    pub security_protocol: String,
    /// SCRAM-SHA-512 (default with SASL), SCRAM-SHA-256 or PLAIN.
    #[arg(long)]
    pub sasl_mechanism: Option<String>,
    /// The SASL user.
    #[arg(long)]
    pub sasl_username: Option<String>,
    /// A file whose first line is the SASL password.
    #[arg(long)]
    pub sasl_password_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) to verify the broker's certificate with (SSL, SASL_SSL).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl ClientSecurity {
    /// The librdkafka settings these flags stand for, checked.
    pub fn settings(&self) -> Result<Vec<(String, String)>> {
        let protocol = self.security_protocol.to_ascii_uppercase();
        let (tls, sasl) = match protocol.as_str() {
            "PLAINTEXT" => (false, false),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            other => {
                bail!("--security-protocol {other:?}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
            }
        };
        let mut settings = vec![("security.protocol".to_string(), protocol.to_ascii_lowercase())];
        if sasl {
            let mechanism =
                self.sasl_mechanism.clone().unwrap_or_else(|| "SCRAM-SHA-512".into()).to_ascii_uppercase();
            if !["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"].contains(&mechanism.as_str()) {
                bail!("--sasl-mechanism {mechanism:?}: expected SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN");
            }
            let user = self.sasl_username.clone().context("SASL needs --sasl-username")?;
            let path = self.sasl_password_file.as_ref().context("SASL needs --sasl-password-file")?;
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let password = text.lines().next().unwrap_or_default().to_string();
            if password.is_empty() {
                bail!("{}: the first line (the password) is empty", path.display());
            }
            settings.extend([
                ("sasl.mechanism".to_string(), mechanism),
                ("sasl.username".to_string(), user),
                ("sasl.password".to_string(), password),
            ]);
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password_file.is_some()
        {
            bail!("SASL flags need --security-protocol SASL_SSL or SASL_PLAINTEXT");
        }
        match (&self.tls_ca, tls) {
            (Some(ca), true) => settings.push(("ssl.ca.location".to_string(), ca.display().to_string())),
            (Some(_), false) => bail!("--tls-ca needs --security-protocol SSL or SASL_SSL"),
            (None, _) => {}
        }
        Ok(settings)
    }

    /// A client configuration for `brokers` with these settings.
    pub fn config(&self, brokers: &str) -> Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        for (key, value) in self.settings()? {
            config.set(key, value);
        }
        Ok(config)
    }
}

/// Flags of `corelog produce`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    /// Broker address(es), HOST:PORT[,HOST:PORT].
    #[arg(long)]
    pub brokers: String,
    /// Topic to produce to (created on first use when the broker allows it).
    #[arg(long)]
    pub topic: String,
    /// Use this JSON field of each line as the record key.
    #[arg(long)]
    pub key_field: Option<String>,
    /// TLS and SASL.
    #[command(flatten)]
    pub security: ClientSecurity,
}

/// Where `consume` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The first offset kept.
    Earliest,
    /// The end of each partition.
    Latest,
    /// This offset in every partition.
    Offset(i64),
}

impl std::str::FromStr for From {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            offset => offset
                .parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .map(Self::Offset)
                .ok_or_else(|| format!("{offset:?}: expected earliest, latest or an offset")),
        }
    }
}

/// Flags of `corelog consume`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    /// Broker address(es), HOST:PORT[,HOST:PORT].
    #[arg(long)]
    pub brokers: String,
    /// Topic to consume.
    #[arg(long)]
    pub topic: String,
    /// Start at earliest, latest or OFFSET (with --group: where to start without a commit).
    #[arg(long, default_value = "earliest")]
    pub from: From,
    /// Join this consumer group and commit what was printed.
    #[arg(long)]
    pub group: Option<String>,
    /// Stop after this many records (default: run until interrupted).
    #[arg(long)]
    pub count: Option<u64>,
    /// TLS and SASL.
    #[command(flatten)]
    pub security: ClientSecurity,
}

/// Longest `produce` waits for outstanding deliveries at the end.
pub const FLUSH_TIMEOUT_MS: u64 = 30_000;
/// Longest `produce` waits for the broker's first answer.
pub const METADATA_TIMEOUT_MS: u64 = 10_000;
/// How long `consume` blocks in one poll.
pub const POLL_TIMEOUT_MS: u64 = 200;

fn key_of(line: &str, field: &str, number: usize) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("line {number}: not JSON, so no field {field:?} to key by"))?;
    match &value[field] {
        serde_json::Value::String(text) => Ok(text.clone()),
        serde_json::Value::Null => bail!("line {number}: no field {field:?} to key by"),
        other => Ok(other.to_string()),
    }
}

/// Produces stdin lines; returns how many were acknowledged.
pub fn produce(args: &ProduceArgs) -> Result<u64> {
    let stdin = std::io::stdin();
    let records = stdin.lock().lines().enumerate().map(|(index, line)| {
        let line = line.context("reading stdin")?;
        let key = args.key_field.as_deref().map(|field| key_of(&line, field, index + 1)).transpose()?;
        Ok((key, line))
    });
    produce_records(&args.brokers, &args.security, &args.topic, records)
}

/// Hands `record` to `producer`, waiting (polling for deliveries) while its queue is
/// full; any other refusal is an error.
pub fn send<K, P, C>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<()>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
    C: rdkafka::producer::ProducerContext,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((error, back))
                if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
            {
                producer.poll(Duration::from_millis(1));
                record = back;
            }
            Err((error, _)) => bail!("{error}"),
        }
    }
}

/// Produces `(key, value)` records with acks=all and idempotence, in order; returns how
/// many were acknowledged. Stops at the first error.
pub fn produce_records(
    brokers: &str,
    security: &ClientSecurity,
    topic: &str,
    records: impl Iterator<Item = Result<(Option<String>, String)>>,
) -> Result<u64> {
    let producer: BaseProducer = security
        .config(brokers)?
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .context("creating the producer")?;
    // Fail fast on an unreachable broker or a refused login, not after the flush timeout.
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_millis(METADATA_TIMEOUT_MS))
        .with_context(|| format!("reaching {brokers}"))?;
    let mut sent = 0u64;
    for (index, record) in records.enumerate() {
        let (key, value) = record?;
        let mut record: BaseRecord<'_, String, String> = BaseRecord::to(topic).payload(&value);
        if let Some(key) = &key {
            record = record.key(key);
        }
        send(&producer, record).with_context(|| format!("record {}", index + 1))?;
        sent += 1;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_millis(FLUSH_TIMEOUT_MS)).context("waiting for acknowledgements")?;
    Ok(sent)
}

/// Prints records to `out` until `--count` is reached (or forever).
pub fn consume(args: &ConsumeArgs, out: &mut impl Write) -> Result<u64> {
    let mut config = args.security.config(&args.brokers)?;
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", if args.from == From::Latest { "latest" } else { "earliest" });
    // Without --group, librdkafka still needs a group id (its assignments live in a
    // group's state) and looks its coordinator up: on a broker with ACLs the principal
    // needs Describe on group `corelog-consume`, or --group names one it may read.
    config.set("group.id", args.group.as_deref().unwrap_or("corelog-consume"));
    let consumer: BaseConsumer = config.create().context("creating the consumer")?;
    if args.group.is_some() {
        consumer.subscribe(&[&args.topic]).context("subscribing")?;
    } else {
        let metadata = consumer
            .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
            .context("fetching topic metadata")?;
        let topic = metadata.topics().first().context("no metadata for the topic")?;
        if let Some(error) = topic.error() {
            bail!("topic {}: {error:?}", args.topic);
        }
        let mut assignment = TopicPartitionList::new();
        let offset = match args.from {
            From::Earliest => Offset::Beginning,
            From::Latest => Offset::End,
            From::Offset(offset) => Offset::Offset(offset),
        };
        for partition in topic.partitions() {
            assignment
                .add_partition_offset(&args.topic, partition.id(), offset)
                .context("building the assignment")?;
        }
        consumer.assign(&assignment).context("assigning partitions")?;
    }
    let mut printed = 0u64;
    let mut last_commit = Instant::now();
    while args.count.is_none_or(|count| printed < count) {
        let Some(message) = consumer.poll(Duration::from_millis(POLL_TIMEOUT_MS)) else { continue };
        let message = message.context("consuming")?;
        out.write_all(message.payload().unwrap_or_default())?;
        out.write_all(b"\n")?;
        printed += 1;
        if args.group.is_some() {
            consumer.store_offset_from_message(&message).ok();
            if last_commit.elapsed() > Duration::from_secs(1) {
                let _ = consumer.commit_consumer_state(CommitMode::Async);
                last_commit = Instant::now();
            }
        }
    }
    out.flush()?;
    if args.group.is_some() && printed > 0 {
        consumer.commit_consumer_state(CommitMode::Sync).context("committing offsets")?;
    }
    Ok(printed)
}
