//! `corelog gen`: payments at an exact offered rate (open loop) to any Kafka broker.
//!
//! Event `i` is due at `start + i / rate` and carries that instant as its `ts` (its
//! creation time), whether or not the producer keeps up: a slow broker shows up as
//! latency measured from `ts`, never as a lower offered rate (no coordinated
//! omission). The sender sleeps until an event is due (spinning for the last 200 µs),
//! hands it to librdkafka (acks=all, idempotent), and reports how far behind schedule
//! it ever fell. Everything but the clock is a function of `--seed`: users (Zipf,
//! `--skew`), planted rings (`--rings`), late events (`--late-fraction`, `--late-by`).

use crate::payments::{Generator, Plan};
use anyhow::{ensure, Context, Result};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Spin instead of sleeping when the next event is this close.
pub const SPIN_US: u64 = 200;
/// Longest wait for the last acknowledgements.
pub const FLUSH_TIMEOUT_MS: u64 = 30_000;

/// Flags of `corelog gen` (DESIGN.md's CLI contract).
#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// Broker address(es), HOST:PORT[,HOST:PORT].
    #[arg(long)]
    pub brokers: String,
    /// Topic to produce to.
    #[arg(long, default_value = "payments")]
    pub topic: String,
    /// TLS and SASL.
    #[command(flatten)]
    pub security: crate::client::ClientSecurity,
    /// Offered rate, events per second.
    #[arg(long)]
    pub rate: f64,
    /// How long to offer it, in seconds.
    #[arg(long)]
    pub seconds: f64,
    /// Ordinary users.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Zipf exponent of user activity (> 0; larger is more skewed).
    #[arg(long, default_value_t = 1.1)]
    pub skew: f64,
    /// Fraction of events sent late (their `ts` is `--late-by` behind the send time).
    #[arg(long, default_value_t = 0.0)]
    pub late_fraction: f64,
    /// How late a late event is (e.g. 30s, 2m).
    #[arg(long, default_value = "60s")]
    pub late_by: String,
    /// Fraud rings to plant (users sharing one card and one device).
    #[arg(long, default_value_t = 0)]
    pub rings: u64,
    /// Users per planted ring.
    #[arg(long, default_value_t = 5)]
    pub ring_size: u64,
    /// Fraction of events from ring members.
    #[arg(long, default_value_t = 0.01)]
    pub ring_share: f64,
    /// Seed of everything but the clock.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// librdkafka `linger.ms`.
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u64,
}

impl GenArgs {
    /// The generator's plan, validated.
    pub fn plan(&self) -> Result<Plan> {
        ensure!(self.rate > 0.0 && self.rate.is_finite(), "--rate must be a positive number");
        ensure!(self.seconds > 0.0 && self.seconds.is_finite(), "--seconds must be a positive number");
        ensure!(self.users > 0, "--users must be positive");
        ensure!(self.skew > 0.0, "--skew must be positive");
        ensure!((0.0..=1.0).contains(&self.late_fraction), "--late-fraction must be within 0..=1");
        ensure!((0.0..=1.0).contains(&self.ring_share), "--ring-share must be within 0..=1");
        ensure!(self.rings == 0 || self.ring_size >= 2, "--ring-size must be at least 2");
        Ok(Plan {
            users: self.users,
            skew: self.skew,
            rings: self.rings,
            ring_size: self.ring_size,
            ring_share: self.ring_share,
            late_fraction: self.late_fraction,
            late_by_ms: crate::serve::parse_duration_ms(&self.late_by)?,
        })
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenReport {
    /// Events handed to the producer.
    pub sent: u64,
    /// Events the broker acknowledged.
    pub acked: u64,
    /// Events that failed.
    pub failed: u64,
    /// Late events among those sent.
    pub late: u64,
    /// Ring-member events among those sent.
    pub ring_events: u64,
    /// Furthest the sender fell behind schedule.
    pub behind_max: Duration,
    /// Wall time of the sending (the last acknowledgements come after).
    pub elapsed: Duration,
}

/// Counts delivery reports.
#[derive(Debug, Default)]
pub struct DeliveryCounter {
    /// Acknowledged.
    pub acked: AtomicU64,
    /// Failed.
    pub failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() { &self.acked } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// An acks=all, idempotent producer with a delivery counter.
pub fn producer(
    brokers: &str,
    security: &crate::client::ClientSecurity,
    linger_ms: u64,
) -> Result<BaseProducer<DeliveryCounter>> {
    security
        .config(brokers)?
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(DeliveryCounter::default())
        .context("creating the producer")
}

/// Waits until `due`: sleeps, then spins the last [`SPIN_US`].
pub fn wait_until(due: Instant) {
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > Duration::from_micros(SPIN_US) {
            std::thread::sleep(left - Duration::from_micros(SPIN_US));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Offers `args.rate` events/s for `args.seconds` s; `on_sent` sees every payment.
pub fn run(args: &GenArgs, mut on_sent: impl FnMut(&crate::payments::Payment)) -> Result<GenReport> {
    let plan = args.plan()?;
    let total = (args.rate * args.seconds).round() as u64;
    let producer = producer(&args.brokers, &args.security, args.linger_ms)?;
    let start_ms = engine::now_ms();
    let mut generator = Generator::with_plan(args.seed, plan, start_ms, 0);
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut report = GenReport::default();
    let started = Instant::now();
    for i in 0..total {
        let offset_us = (i as f64 * 1e6 / args.rate) as u64;
        let due = started + Duration::from_micros(offset_us);
        wait_until(due);
        report.behind_max = report.behind_max.max(due.elapsed());
        let payment = generator.next_payment_at(start_ms + (offset_us / 1000) as i64);
        payment.key(&mut key);
        payment.json(&mut value);
        let record = BaseRecord::to(&args.topic).key(&key[..]).payload(&value[..]);
        crate::client::send(&producer, record).with_context(|| format!("event {i}"))?;
        producer.poll(Duration::ZERO);
        report.sent += 1;
        report.late += u64::from(payment.late);
        report.ring_events += u64::from(payment.ring);
        on_sent(&payment);
    }
    report.elapsed = started.elapsed();
    producer.flush(Duration::from_millis(FLUSH_TIMEOUT_MS)).context("waiting for acknowledgements")?;
    report.acked = producer.context().acked.load(Ordering::Relaxed);
    report.failed = producer.context().failed.load(Ordering::Relaxed);
    ensure!(report.failed == 0, "{} of {} events were not acknowledged", report.failed, report.sent);
    Ok(report)
}

/// Prints the one-paragraph summary.
pub fn print_report(args: &GenArgs, report: &GenReport) {
    eprintln!(
        "corelog gen: {} events to {:?} in {:.2} s (offered {:.0}/s, achieved {:.0}/s), {} acknowledged, \
         {} late, {} from {} planted rings, at most {:.1} ms behind schedule",
        report.sent,
        args.topic,
        report.elapsed.as_secs_f64(),
        args.rate,
        report.sent as f64 / report.elapsed.as_secs_f64(),
        report.acked,
        report.late,
        report.ring_events,
        args.rings,
        report.behind_max.as_secs_f64() * 1e3
    );
}
