//! `corelog-bench e2e`: event creation to decision readable by a Kafka consumer,
//! open loop, against the same pipeline with the query outside the broker.
//!
//! * **corelog**: `corelog serve --queries` with the `e2e` query (a deny-list rule and
//!   a velocity rule over 10 s windows) running on the owning shards.
//! * **reference**: `corelog serve` without queries, and the same query (the engine's
//!   own operator code) in an external consumer that reads `payments` with rdkafka
//!   and produces its decisions with rdkafka (acks=all), as a Kafka Streams or Flink
//!   job would.
//!
//! A producer thread offers payments at a fixed rate: event `i` is due at
//! `start + i / rate`, its latency runs from that instant (no coordinated omission).
//! It sends to explicit partitions with an idempotent producer, so the `k`-th event of
//! a partition has offset `k` and the producer knows, before sending, the offset of
//! every event whose card is on the deny-list: the decision for it (which carries the
//! trigger's partition and offset) is matched exactly and timed in µs. A consumer
//! thread reads the decisions topic (rdkafka, long poll). Latency p50/p99/p999 go to
//! an `hdrhistogram`; the first second (connections, metadata) is not counted.
//!
//! Rates: 10k/s, 100k/s, then upward by 1.5× while the pipeline sustains the rate
//! (the producer keeps its schedule within 3 %, every expected decision arrives, p99
//! stays under [`SUSTAINED_P99_MS_MAX`]); the highest sustained rate is reported.

use crate::report::Figure;
use anyhow::{bail, ensure, Context, Result};
use corelog_tools::client::send;
use corelog_tools::payments::{partition_for, Generator, Plan};
use engine::query::deny::DenySet;
use engine::query::json::extract;
use engine::query::window::{Operator, Output};
use engine::query::{EventFields, QueryDef};
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Partitions of `payments` and of the decisions topics.
pub const PARTITIONS: u32 = 4;
/// Ordinary users (Zipf 1.1).
pub const USERS: u64 = 100_000;
/// Users whose cards are on the deny-list: every `DENY_EVERY`-th.
pub const DENY_EVERY: u64 = 20;
/// Events in the first this-many ms are not counted (connections, metadata).
pub const WARMUP_MS: u64 = 1_000;
/// A rate is sustained only with p99 under this.
pub const SUSTAINED_P99_MS_MAX: f64 = 50.0;
/// The producer wakes at most once per this many µs and sends what is due (each event
/// still timed from its own due time). A shorter tick made it spin (`wait_until` spins
/// its last 200 µs) and took a core from the pipelines; see `kafka::PACE_TICK`.
pub const SEND_TICK_US: u64 = 1_000;
/// Longest wait for the last decisions after the producer stops.
pub const DRAIN_TIMEOUT_MS: u64 = 15_000;

/// The query both pipelines run.
pub const QUERY: &str = r#"
name = "e2e"
source = "payments"
key = "user_id"
event_time = "ts"
value = "amount_cents"
window = { size = "10s", lateness = "1s" }
deny_list = { topic = "e2e-deny" }
[[rule]]
name = "denied-card"
when = "card_id in denylist"
[[rule]]
name = "velocity"
when = "count > 50 within 10s"
"#;

/// Options of the e2e scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    /// Finish in about a minute (shorter runs, fewer rates).
    #[arg(long)]
    pub quick: bool,
    /// Directory for broker data (default: target/bench/e2e).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The brokers' flush mode (group: durable before anyone reads it).
    #[arg(long, default_value = "group")]
    pub flush: String,
    /// Only these offered rates (events/s), no search for the highest sustained one.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Soak: run each fixed rate this many seconds per pipeline (no search for the
    /// highest sustained rate) and report p99, p99.9 and max per 10 s interval.
    #[arg(long)]
    pub seconds: Option<f64>,
}

struct Serve {
    child: Child,
    address: SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, queries: Option<&Path>, flush: &str) -> Result<Serve> {
    let binary = std::env::current_exe()?.with_file_name("corelog");
    ensure!(
        binary.exists(),
        "{} not found: build it with `cargo build --release -p tools`",
        binary.display()
    );
    let _ = std::fs::remove_dir_all(dir);
    let address = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut command = Command::new(&binary);
    command
        .args(["serve", "--data-dir", dir.to_str().context("utf-8 path")?, "--listen", &address.to_string()])
        .args(["--flush", flush, "--default-partitions", &PARTITIONS.to_string()])
        // Extra `corelog serve` flags for investigations, e.g. `--preallocate false`.
        .args(std::env::var("CORELOG_BENCH_SERVE_ARGS").unwrap_or_default().split_whitespace())
        .stderr(Stdio::null());
    if let Some(queries) = queries {
        command.args(["--queries", queries.to_str().context("utf-8 path")?]);
    }
    let mut child = command.spawn().context("starting corelog serve")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(address).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("corelog serve exited before listening ({status})");
        }
        ensure!(Instant::now() < deadline, "corelog serve did not listen within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Serve { child, address })
}

fn producer(address: SocketAddr) -> Result<BaseProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", address.to_string())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .context("creating a producer")
}

/// A consumer assigned every partition of `topic` from the beginning, long-polling.
fn consumer(address: SocketAddr, topic: &str, group: &str) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", address.to_string())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.min.bytes", "1")
        .create()
        .context("creating a consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS as i32 {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// The deny-list: both cards of every `DENY_EVERY`-th user.
fn denied_cards() -> Vec<String> {
    (1..=USERS)
        .filter(|u| u % DENY_EVERY == 0)
        .flat_map(|u| [format!("c{}", 2 * u), format!("c{}", 2 * u + 1)])
        .collect()
}

fn publish_deny_list(address: SocketAddr) -> Result<()> {
    let producer = producer(address)?;
    for id in denied_cards() {
        let record = BaseRecord::<str, str>::to("e2e-deny").key(&id).payload("{}").partition(0);
        send(&producer, record)?;
    }
    producer.flush(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(800)); // the follower polls every 200 ms
    Ok(())
}

/// One run at one rate.
#[derive(Debug)]
struct Run {
    latency_us: Histogram<u64>,
    /// (seconds from the start the event was due, latency in µs) per decision.
    samples: Vec<(f64, u64)>,
    expected: usize,
    received: usize,
    achieved_rate: f64,
    /// Share (%) of the machine's CPU time the hypervisor stole during the run.
    steal_percent: Option<f64>,
}

impl Run {
    fn sustained(&self, rate: f64) -> bool {
        self.achieved_rate >= 0.97 * rate
            && self.received == self.expected
            && self.latency_us.value_at_quantile(0.99) as f64 / 1e3 <= SUSTAINED_P99_MS_MAX
    }
}

/// Offers `rate` payments/s for `seconds` to `address` and times the decisions that
/// appear on `decisions`.
fn offer(address: SocketAddr, decisions: &str, rate: f64, seconds: f64) -> Result<Run> {
    // Before the schedule's clock starts: the previous run's writeback settles first.
    crate::report::quiesce();
    let producer = producer(address)?;
    let consumer = consumer(address, decisions, "corelog-bench-e2e")?;
    let denied: std::collections::HashSet<String> = denied_cards().into_iter().collect();
    let stop = AtomicBool::new(false);
    let start = Instant::now() + Duration::from_millis(200);
    let total = (rate * seconds) as u64;
    let cpu_before = crate::steal::ticks();
    let (sent, received) = std::thread::scope(|scope| -> Result<_> {
        let reader = scope.spawn(|| -> Result<HashMap<(u32, i64), u64>> {
            let mut seen = HashMap::new();
            let mut idle_since: Option<Instant> = None;
            loop {
                match consumer.poll(Duration::from_millis(20)) {
                    Some(message) => {
                        let at = Instant::now().saturating_duration_since(start).as_micros() as u64;
                        let message = message?;
                        let value: serde_json::Value =
                            serde_json::from_slice(message.payload().unwrap_or_default())?;
                        if let (Some(p), Some(offset), true) = (
                            value["partition"].as_u64(),
                            value["offset"].as_i64(),
                            value["denied"].is_string(),
                        ) {
                            seen.entry((p as u32, offset)).or_insert(at);
                        }
                        idle_since = None;
                    }
                    None if stop.load(Ordering::Relaxed) => {
                        let idle = *idle_since.get_or_insert_with(Instant::now);
                        if idle.elapsed() > Duration::from_millis(1_000) {
                            return Ok(seen);
                        }
                    }
                    None => {}
                }
            }
        });
        let mut generator = Generator::with_plan(7, Plan::ordinary(USERS, 1.1), 0, 0);
        let mut offsets = [0i64; PARTITIONS as usize];
        let mut expected: HashMap<(u32, i64), u64> = HashMap::new();
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let wall_start_ms = engine::now_ms() + 200;
        // Events are sent in ticks of at least SEND_TICK_US: every event already due
        // goes out at once, then the thread sleeps. Latency still runs from each
        // event's own due time, and the producer leaves the cores to the pipeline.
        let mut i = 0u64;
        while i < total {
            let now_us = Instant::now().saturating_duration_since(start).as_micros() as u64;
            let next_due_us = (i as f64 * 1e6 / rate) as u64;
            if next_due_us > now_us {
                std::thread::sleep(Duration::from_micros((next_due_us - now_us).max(SEND_TICK_US)));
                continue;
            }
            while i < total && ((i as f64 * 1e6 / rate) as u64) <= now_us {
                let due_us = (i as f64 * 1e6 / rate) as u64;
                i += 1;
                let payment = generator.next_payment_at(wall_start_ms + (due_us / 1000) as i64);
                payment.key(&mut key);
                payment.json(&mut value);
                let partition = partition_for(&key, PARTITIONS);
                let offset = offsets[partition as usize];
                offsets[partition as usize] += 1;
                if due_us >= WARMUP_MS * 1000 && denied.contains(&format!("c{}", payment.card)) {
                    expected.insert((partition, offset), due_us);
                }
                let record =
                    BaseRecord::to("payments").key(&key[..]).payload(&value[..]).partition(partition as i32);
                send(&producer, record)?;
            }
            producer.poll(Duration::ZERO);
        }
        let achieved_rate = total as f64 / start.elapsed().as_secs_f64();
        producer.flush(Duration::from_millis(DRAIN_TIMEOUT_MS))?;
        // Wait for the expected decisions, then stop the reader.
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let seen = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        Ok(((expected, achieved_rate), seen))
    })?;
    let ((expected, achieved_rate), seen) = (sent, received);
    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut samples = Vec::with_capacity(expected.len());
    let mut matched = 0;
    for (id, due_us) in &expected {
        if let Some(at) = seen.get(id) {
            latency_us.record(at.saturating_sub(*due_us))?;
            samples.push((*due_us as f64 / 1e6, at.saturating_sub(*due_us)));
            matched += 1;
        }
    }
    let steal_percent = crate::steal::percent(cpu_before, crate::steal::ticks());
    Ok(Run { latency_us, samples, expected: expected.len(), received: matched, achieved_rate, steal_percent })
}

/// The query as an external consumer: reads `payments`, runs the operator, produces
/// decisions to `ext.decisions` (acks=all), until `stop`.
fn external_query(address: SocketAddr, stop: &AtomicBool) -> Result<()> {
    let def = Arc::new(QueryDef::parse(QUERY, "e2e")?);
    let fields = EventFields::new(&def);
    let consumer = consumer(address, "payments", "corelog-bench-external-query")?;
    let producer = producer(address)?;
    let deny = DenySet::from_ids(denied_cards());
    let mut operators: Vec<Operator> = (0..PARTITIONS).map(|_| Operator::new(def.clone())).collect();
    let mut out = Vec::new();
    let mut json = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(message) = consumer.poll(Duration::from_millis(20)) else { continue };
        let message = message?;
        let partition = message.partition() as u32;
        let Some(value) = message.payload() else { continue };
        let mut slots = vec![None; fields.names().len()];
        if !extract(value, fields.names(), &mut slots) {
            continue;
        }
        let Some(event) = fields.event(&slots, message.offset(), 0) else { continue };
        let mut denied = [None; engine::query::RULES_MAX];
        let count = fields.denied_ids(&slots, &mut denied);
        operators[partition as usize].process(&event, &denied[..count], &deny, &mut out);
        for output in out.drain(..) {
            let Output::Decision(decision) = output else { continue };
            json.clear();
            let denied = match &decision.value {
                engine::query::window::DecisionValue::Denied(id) => format!(r#","denied":"{id}""#),
                engine::query::window::DecisionValue::Aggregate(v) => format!(r#","value":{v}"#),
            };
            json.extend_from_slice(
                format!(
                    r#"{{"partition":{partition},"offset":{},"ts":{},"key":"{}"{denied}}}"#,
                    decision.trigger_offset, decision.trigger_time_ms, decision.key
                )
                .as_bytes(),
            );
            let record = BaseRecord::to("ext.decisions")
                .key(&*decision.key)
                .payload(&json[..])
                .partition(partition as i32);
            send(&producer, record)?;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

/// The in-broker pipeline at `rate`.
fn corelog_run(dir: &Path, flush: &str, rate: f64, seconds: f64) -> Result<Run> {
    let queries = dir.join("queries");
    std::fs::create_dir_all(&queries)?;
    std::fs::write(queries.join("e2e.toml"), QUERY)?;
    let server = serve(&dir.join("corelog"), Some(&queries), flush)?;
    publish_deny_list(server.address)?;
    offer(server.address, "e2e.decisions", rate, seconds)
}

/// The external-consumer pipeline at `rate`.
fn reference_run(dir: &Path, flush: &str, rate: f64, seconds: f64) -> Result<Run> {
    let server = serve(&dir.join("reference"), None, flush)?;
    // Topics exist before anyone reads them (an unknown topic makes librdkafka back off).
    crate::kafka::create_topic(server.address, "payments")?;
    crate::kafka::create_topic(server.address, "ext.decisions")?;
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let query = scope.spawn(|| external_query(server.address, &stop));
        std::thread::sleep(Duration::from_millis(500));
        let run = offer(server.address, "ext.decisions", rate, seconds);
        stop.store(true, Ordering::Relaxed);
        query.join().map_err(|_| anyhow::anyhow!("external query panicked"))??;
        run
    })
}

fn describe(name: &str, rate: f64, run: &Run) {
    eprintln!(
        "  {name:<10} offered {:>7.0}/s achieved {:>7.0}/s: p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms ({} of {} decisions){}",
        rate,
        run.achieved_rate,
        run.latency_us.value_at_quantile(0.5) as f64 / 1e3,
        run.latency_us.value_at_quantile(0.99) as f64 / 1e3,
        run.latency_us.value_at_quantile(0.999) as f64 / 1e3,
        run.received,
        run.expected,
        run.steal_percent.map(|steal| format!("; hypervisor stole {steal:.1}% of the CPU")).unwrap_or_default()
    );
}

fn figures(scenario: &str, ours: &Run, reference: &Run) -> Vec<Figure> {
    [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)]
        .into_iter()
        .map(|(name, q)| Figure {
            scenario: scenario.to_string(),
            name: name.to_string(),
            value: ours.latency_us.value_at_quantile(q) as f64 / 1e3,
            unit: "ms".to_string(),
            reference: Some((
                "external-consumer".to_string(),
                reference.latency_us.value_at_quantile(q) as f64 / 1e3,
            )),
        })
        .collect()
}

/// Raises the offered rate by 1.5× from `sustained` for at most `steps` runs while
/// `run` sustains it; returns the highest sustained rate.
fn highest_sustained(mut sustained: f64, steps: usize, run: impl Fn(f64) -> Result<Run>) -> Result<f64> {
    let mut rate = sustained * 1.5;
    for _ in 0..steps {
        if !run(rate)?.sustained(rate) {
            break;
        }
        sustained = rate;
        rate *= 1.5;
    }
    Ok(sustained)
}

/// Runs the scenario.
pub fn bench(args: &E2eArgs) -> Result<Vec<Figure>> {
    let dir = args.dir.clone().unwrap_or_else(|| crate::report::bench_dir().join("e2e"));
    let seconds = args.seconds.unwrap_or(if args.quick { 3.0 } else { 10.0 });
    let mut figures_out = Vec::new();
    let (mut best, mut best_ref) = (0.0, 0.0);
    eprintln!(
        "e2e: event creation -> decision readable by a Kafka consumer, open loop, {seconds} s per rate"
    );
    let fixed = if args.rates.is_empty() { vec![10_000.0, 100_000.0] } else { args.rates.clone() };
    for rate in fixed {
        let ours = corelog_run(&dir, &args.flush, rate, seconds)?;
        describe("corelog", rate, &ours);
        let reference = reference_run(&dir, &args.flush, rate, seconds)?;
        describe("external", rate, &reference);
        ensure!(ours.expected > 0 && ours.received == ours.expected, "corelog missed decisions at {rate}/s");
        if ours.sustained(rate) {
            best = rate;
        }
        if reference.sustained(rate) {
            best_ref = rate;
        }
        let scenario = format!("e2e-{}k", rate as u64 / 1000);
        crate::soak::dump_timeline(&format!("{scenario}-corelog"), &ours.samples);
        crate::soak::dump_timeline(&format!("{scenario}-external"), &reference.samples);
        let mut figures = figures(&scenario, &ours, &reference);
        if args.seconds.is_some() {
            figures.extend(crate::soak::report("corelog", &scenario, &ours.samples)?);
            figures.extend(crate::soak::report(
                "external",
                &format!("{scenario}-external"),
                &reference.samples,
            )?);
        }
        for figure in &figures {
            println!("{}", figure.line());
        }
        figures_out.extend(figures);
    }
    // The highest sustained rate, and the reference's at the same offered rates.
    let steps = if !args.rates.is_empty() || args.seconds.is_some() {
        0
    } else if args.quick {
        2
    } else {
        5
    };
    if best >= 100_000.0 {
        best = highest_sustained(best, steps, |rate| {
            let run = corelog_run(&dir, &args.flush, rate, seconds)?;
            describe("corelog", rate, &run);
            Ok(run)
        })?;
    }
    if best_ref >= 100_000.0 {
        best_ref = highest_sustained(best_ref, steps, |rate| {
            let run = reference_run(&dir, &args.flush, rate, seconds)?;
            describe("external", rate, &run);
            Ok(run)
        })?;
    }
    let figure = Figure {
        scenario: "e2e-max".into(),
        name: "sustained".into(),
        value: best,
        unit: "events/s".into(),
        reference: Some(("external-consumer".into(), best_ref)),
    };
    println!("{}", figure.line());
    figures_out.push(figure);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures_out)
}
