//! `corelog-bench kafka`: produce and consume over the Kafka protocol with one client
//! library (`rdkafka`), against peer brokers started on the same machine in the same
//! run.
//!
//! * corelog: `corelog serve --flush group` (found next to this binary; `--flush os`
//!   shows how much of the latency is the syncs).
//! * tansu (crates.io, `cargo install tansu --features libsql`): found on PATH, run
//!   with SQLite storage in a temporary directory.
//! * NATS JetStream (Debian's `nats-server`, found on PATH): it does not speak the
//!   Kafka protocol, so it is driven by its own client with the same workload (see
//!   `nats`).
//!
//! Figures per broker: produce throughput at full speed (acks=all), produce latency
//! p50/p99 at full speed and at half of corelog's peak rate (open loop: sends are paced
//! by the clock, latency runs from the scheduled send time, so a stall is counted), and
//! consume throughput from the beginning.
//!
//! Each broker's paced run also reports where its tail sits in time (`paced tail`,
//! `tail`): the share of deliveries over p99 that fall in the worst 100 ms window
//! (`worst_window_share`, issue 17 bounds it at 20%) and in the worst 2% of windows. A
//! few stalls show a large share; queueing spread evenly over the run shows about 1%
//! per window. The disk's open-loop floor (below) reports the same share, so a run
//! shows how much of its stalls the disk alone has.
//!
//! corelog also runs with `--flush os` (acknowledged before any sync): at full speed,
//! for one produce throughput at equal durability with Debian's NATS (2.9 cannot sync
//! every write, so its figures are at page-cache durability; `kafka-produce-unsynced`),
//! and paced at the same rate, for the latency of everything on the path but the syncs
//! (`p99_vs_unsynced`: the client's `linger.ms` and pacing tick, the two processes
//! sharing the machine's cores, corelog's request path).
//!
//! corelog also runs once with only a SASL_SSL listener (TLS, SCRAM-SHA-512), for the
//! full-speed produce throughput over TLS against the plaintext run of the same bench
//! (`kafka-produce-sasl-ssl`).
//!
//! The paced producer wakes once per [`PACE_TICK`] and sends what is due; deliveries
//! are timed on the producer's own thread (`ThreadedProducer`). The paced run prints
//! the share of CPU time the hypervisor stole while it ran (`steal`), and
//! `CORELOG_BENCH_TIMELINE=PATH` writes its deliveries to `PATH.corelog` (and `e2e`
//! its decisions to `PATH.e2e-10k-corelog`, `PATH.e2e-10k-external`, ...).
//!
//! `CORELOG_BENCH_SERVE_ARGS` adds flags to the `corelog serve` command line (for
//! investigations, e.g. `--metrics 127.0.0.1:9464` to read the broker's own request
//! and fsync latency histograms while the bench runs).
//!
//! The paced latency is also set against the disk itself: `fio` (when on PATH) writes
//! the same bytes per second to as many files as the topic has partitions, one
//! `linger.ms` of a partition's messages per write, each write followed by
//! `fdatasync` (`p50_vs_disk`, `p99_vs_disk`). No broker that acknowledges acks=all
//! only after an fdatasync can beat that floor on this machine. fio counts one sample
//! per sync, the broker's run one per message, so a device stall weighs thousands of
//! times more in the latter; `*_vs_disk_open_loop` sets the run against the disk's
//! floor counted per message (`floor`), and `p99_vs_disk_in_order` against the same
//! floor acknowledged as one connection sees it (a request answered once all its
//! partitions are durable, answers in request order: a stall on one file delays all).

use crate::report::Figure;
use crate::tail::Concentration;
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Partitions of the benchmark topic.
pub const PARTITIONS: i32 = 4;

/// The paced producer wakes at most once per tick and then sends every message already
/// due (each still timed from its own scheduled send). Waking once per message (about
/// every 60 µs at 100,000 msg/s, with the kernel's timer slack) cost the client a third
/// of a core and pushed the VM over its host's CPU quota: see docs/ENGINE.md, "Produce
/// latency at half of peak". One tick is the producer's `linger.ms`.
pub const PACE_TICK: Duration = Duration::from_millis(1);
/// A paced run first sends this long at its rate without counting it: the step from
/// idle to the rate costs the first ~150 ms (96% of one quick run's over-p99
/// deliveries fell in its first 100 ms), and the figures are about the steady state.
/// The warm-up's own p50, p99 and max are printed. The disk references skip the same
/// first second (`fio --ramp_time`, `floor::open_loop_sync`).
pub const PACED_WARM_UP: Duration = Duration::from_secs(1);

/// Options of the kafka scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Finish in under a minute (fewer messages).
    #[arg(long)]
    pub quick: bool,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Directory for broker data (default: target/bench/kafka).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Messages/s of the open-loop latency run (default: half of corelog's peak).
    #[arg(long)]
    pub rate: Option<f64>,
    /// corelog's `--flush` mode (`group` is the durable one the targets are about;
    /// `os` shows how much of the latency the syncs are).
    #[arg(long, default_value = "group")]
    pub flush: String,
    /// Soak: run only corelog's paced produce for this many seconds and report p99,
    /// p99.9 and max per 10 s interval (see `soak`).
    #[arg(long)]
    pub seconds: Option<f64>,
}

struct Broker {
    name: &'static str,
    child: Child,
    address: SocketAddr,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_address() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_listening(name: &str, address: SocketAddr, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(address).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited before listening ({status})");
        }
        if Instant::now() > deadline {
            bail!("{name} did not listen on {address} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn start_corelog(dir: &Path, flush: &str) -> Result<Broker> {
    let binary = std::env::current_exe()?.with_file_name("corelog");
    if !binary.exists() {
        bail!("{} not found: build it with `cargo build --release -p tools`", binary.display());
    }
    let address = free_address()?;
    let mut child = Command::new(&binary)
        .args(["serve", "--data-dir", dir.join("corelog").to_str().context("utf-8 path")?])
        .args([
            "--listen",
            &address.to_string(),
            "--flush",
            flush,
            "--default-partitions",
            &PARTITIONS.to_string(),
        ])
        // Extra `corelog serve` flags for investigations, e.g. `--metrics 127.0.0.1:9464`.
        .args(std::env::var("CORELOG_BENCH_SERVE_ARGS").unwrap_or_default().split_whitespace())
        .stderr(Stdio::null())
        .spawn()
        .context("starting corelog serve")?;
    wait_listening("corelog", address, &mut child)?;
    Ok(Broker { name: "corelog", child, address })
}

fn start_tansu(dir: &Path) -> Option<Result<Broker>> {
    let found = Command::new("tansu").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("note: tansu not found on PATH; install it with `cargo install tansu --features libsql` for a peer ratio");
        return None;
    }
    Some((|| {
        let address = free_address()?;
        let data = dir.join("tansu");
        std::fs::create_dir_all(&data)?;
        let url = format!("tcp://{address}");
        let mut child = Command::new("tansu")
            .args(["broker", "--storage-engine", &format!("sqlite://{}/tansu.db", data.display())])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu")?;
        wait_listening("tansu", address, &mut child)?;
        Ok(Broker { name: "tansu", child, address })
    })())
}

/// Records produce latency from the (scheduled) send time carried as the opaque.
struct LatencyContext {
    deliveries: Mutex<Deliveries>,
    errors: Mutex<u64>,
}

/// What the delivery callback records, behind one lock.
struct Deliveries {
    latency_us: Histogram<u64>,
    /// (scheduled send, latency in µs) of every delivery, for [`Concentration`].
    timeline: Vec<(Instant, u64)>,
}

impl Deliveries {
    /// Forgets what was recorded (after an uncounted warm-up).
    fn clear(&mut self) {
        self.latency_us.reset();
        self.timeline.clear();
    }
}

impl ClientContext for LatencyContext {}

impl ProducerContext for LatencyContext {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                let micros = sent.elapsed().as_micros() as u64;
                let mut deliveries = self.deliveries.lock().expect("deliveries lock");
                let _ = deliveries.latency_us.record(micros.max(1));
                deliveries.timeline.push((*sent, micros));
            }
            Err(_) => *self.errors.lock().expect("error count lock") += 1,
        }
    }
}

/// Creates `topic` with [`PARTITIONS`] partitions through the Kafka admin API.
pub(crate) fn create_topic(address: SocketAddr, topic: &str) -> Result<()> {
    create_topic_with(address, &[], topic)
}

/// Creates `topic` with client `settings` (TLS, SASL).
fn create_topic_with(address: SocketAddr, settings: &[(String, String)], topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(address, settings).create().context("admin client")?;
    let runtime = futures_executor_block_on(admin.create_topics(
        &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ));
    runtime.context("creating the topic")?;
    Ok(())
}

/// A client configuration for `address` with extra `settings`.
fn client_config(address: SocketAddr, settings: &[(String, String)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", address.to_string());
    for (key, value) in settings {
        config.set(key, value);
    }
    config
}

/// A tiny executor for the admin client's one future (no async runtime needed).
fn futures_executor_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context as TaskContext, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(std::sync::Arc::new(ThreadWaker(std::thread::current())));
    let mut context = TaskContext::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(10)),
        }
    }
}

struct ProduceRun {
    messages_per_s: f64,
    latency_us: Histogram<u64>,
    /// (seconds from the start to the scheduled send, latency in µs) per delivery.
    timeline: Vec<(f64, u64)>,
}

/// Produces `count` messages, paced at `rate` messages/s when given (open loop).
fn produce(
    address: SocketAddr,
    settings: &[(String, String)],
    topic: &str,
    count: u64,
    size: usize,
    rate: Option<f64>,
) -> Result<ProduceRun> {
    let context = LatencyContext {
        deliveries: Mutex::new(Deliveries {
            latency_us: Histogram::new(3)?,
            timeline: crate::soak::prefaulted(count as usize, (Instant::now(), 0)),
        }),
        errors: Mutex::new(0),
    };
    // A threaded producer: its own thread serves delivery reports as they arrive, so a
    // delivery is timed when the broker's answer is in, not when the pacing loop next
    // wakes.
    let producer: ThreadedProducer<LatencyContext> = client_config(address, settings)
        .set("acks", "all")
        .set("linger.ms", if rate.is_some() { "1" } else { "5" })
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(context)
        .context("producer")?;
    let payload = vec![b'x'; size];
    warm_up(&producer, topic, &payload)?;
    if let Some(rate) = rate {
        let warm = send(&producer, topic, &payload, (rate * PACED_WARM_UP.as_secs_f64()) as u64, Some(rate))?;
        let context = producer.context();
        let mut deliveries = context.deliveries.lock().expect("deliveries lock");
        let micros = |q| deliveries.latency_us.value_at_quantile(q) as f64 / 1e3;
        eprintln!(
            "paced warm-up ({:.0} s at {rate:.0} msg/s, not counted): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            warm.as_secs_f64(),
            micros(0.5),
            micros(0.99),
            micros(1.0)
        );
        deliveries.clear();
    }
    let started = Instant::now();
    send(&producer, topic, &payload, count, rate)?;
    let elapsed = started.elapsed().as_secs_f64();
    let context = producer.context();
    let errors = *context.errors.lock().expect("error count lock");
    if errors > 0 {
        bail!("{errors} deliveries failed");
    }
    let mut deliveries = context.deliveries.lock().expect("deliveries lock");
    let latency_us = deliveries.latency_us.clone();
    let timeline = std::mem::take(&mut deliveries.timeline)
        .into_iter()
        .map(|(sent, micros)| ((sent - started).as_secs_f64(), micros))
        .collect();
    Ok(ProduceRun { messages_per_s: count as f64 / elapsed, latency_us, timeline })
}

/// Sends `count` messages, paced at `rate` messages/s when given (open loop), and
/// waits for every delivery; the time it took.
fn send(
    producer: &ThreadedProducer<LatencyContext>,
    topic: &str,
    payload: &[u8],
    count: u64,
    rate: Option<f64>,
) -> Result<Duration> {
    let started = Instant::now();
    for i in 0..count {
        let scheduled = match rate {
            Some(rate) => {
                let at = started + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if at > now {
                    // Sleep rather than spin (on a 2-core machine a spinning client
                    // steals the broker's core), and at least one tick, so the client
                    // wakes at most once per tick whatever the rate (see PACE_TICK).
                    std::thread::sleep((at - now).max(PACE_TICK));
                }
                at
            }
            None => Instant::now(),
        };
        let key = (i % 1024).to_string();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(scheduled)).payload(payload).key(&key);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).context("flushing")?;
    Ok(started.elapsed())
}

/// Sends one message to every partition and waits for the acknowledgements, so the
/// connection and the topic's metadata exist before the clock starts: the figure is
/// steady-state latency, not the first request's connection set-up.
fn warm_up(producer: &ThreadedProducer<LatencyContext>, topic: &str, payload: &[u8]) -> Result<()> {
    for partition in 0..PARTITIONS {
        let record =
            BaseRecord::with_opaque_to(topic, Box::new(Instant::now())).payload(payload).key("warm-up");
        producer.send(record.partition(partition)).map_err(|(error, _)| error).context("warm-up send")?;
    }
    producer.flush(Duration::from_secs(30)).context("warm-up flush")?;
    let context = producer.context();
    context.deliveries.lock().expect("deliveries lock").clear();
    Ok(())
}

fn consume(address: SocketAddr, topic: &str, count: u64) -> Result<f64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", address.to_string())
        .set("group.id", "corelog-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .create()
        .context("consumer")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let mut received = 0u64;
    let deadline = started + Duration::from_secs(120);
    while received < count {
        if Instant::now() > deadline {
            bail!("consumed {received} of {count} in 120 s");
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.context("consuming")?;
            if message.payload().is_some() {
                received += 1;
            }
        }
    }
    Ok(received as f64 / started.elapsed().as_secs_f64())
}

struct Measured {
    name: &'static str,
    produce_mb_per_s: f64,
    produce_p99_ms_full: f64,
    half_rate_p50_ms: f64,
    half_rate_p99_ms: f64,
    /// Where the paced run's tail sits in time (none for a peer without a timeline).
    half_rate_tail: Option<Concentration>,
    consume_mb_per_s: f64,
}

fn measure(broker: &Broker, args: &KafkaArgs, half_rate: Option<f64>) -> Result<(Measured, f64)> {
    let count: u64 = if args.quick { 200_000 } else { 1_000_000 };
    let mb = |messages_per_s: f64| messages_per_s * args.size as f64 / 1e6;
    create_topic(broker.address, "bench")?;
    let full = produce(broker.address, &[], "bench", count, args.size, None)?;
    let consumed = consume(broker.address, "bench", count)?;
    let rate = half_rate.unwrap_or(full.messages_per_s / 2.0);
    let paced_count = ((rate * if args.quick { 3.0 } else { 10.0 }) as u64).max(1000);
    create_topic(broker.address, "paced")?;
    crate::report::quiesce();
    let before = crate::steal::ticks();
    let paced = produce(broker.address, &[], "paced", paced_count, args.size, Some(rate))?;
    let steal = crate::steal::percent(before, crate::steal::ticks());
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let tail = Concentration::of(&paced.latency_us, &paced.timeline);
    eprintln!("{}: paced tail: {tail}", broker.name);
    if let Some(steal) = steal {
        eprintln!("{}: paced run: the hypervisor stole {steal:.1}% of the CPU time", broker.name);
    }
    crate::soak::dump_timeline(broker.name, &paced.timeline);
    eprintln!(
        "{}: produce {:.0} msg/s ({:.0} MB/s), consume {:.0} msg/s; at {:.0} msg/s produce p50 {:.2} ms p99 {:.2} ms",
        broker.name,
        full.messages_per_s,
        mb(full.messages_per_s),
        consumed,
        rate,
        ms(&paced.latency_us, 0.5),
        ms(&paced.latency_us, 0.99)
    );
    Ok((
        Measured {
            name: broker.name,
            produce_mb_per_s: mb(full.messages_per_s),
            produce_p99_ms_full: ms(&full.latency_us, 0.99),
            half_rate_p50_ms: ms(&paced.latency_us, 0.5),
            half_rate_p99_ms: ms(&paced.latency_us, 0.99),
            half_rate_tail: Some(tail),
            consume_mb_per_s: mb(consumed),
        },
        rate,
    ))
}

/// fdatasync latency (p50, p99 in ms) of fio writing the paced run's load to
/// [`PARTITIONS`] files, each write (one `linger.ms` of a partition's messages, at least
/// 4 KiB) followed by a sync; `None` without fio.
fn disk_floor(base: &Path, args: &KafkaArgs, rate: f64) -> Option<(f64, f64)> {
    if !crate::fio::available() {
        return None;
    }
    crate::report::quiesce();
    let bytes_per_s = (rate * args.size as f64 / PARTITIONS as f64) as u64;
    let block_bytes = ((bytes_per_s / 1000) as usize).next_multiple_of(4096).max(4096);
    let seconds = if args.quick { 3 } else { 10 };
    match crate::fio::paced_sync(
        &base.join("fio"),
        PARTITIONS as usize,
        bytes_per_s,
        block_bytes,
        (seconds, PACED_WARM_UP),
    ) {
        Ok((p50_ns, p99_ns)) => {
            eprintln!(
                "fio, {PARTITIONS} files at {:.1} MB/s each in {} KiB writes, each followed by fdatasync: sync p50 {:.2} ms p99 {:.2} ms",
                bytes_per_s as f64 / 1e6,
                block_bytes >> 10,
                p50_ns / 1e6,
                p99_ns / 1e6
            );
            Some((p50_ns / 1e6, p99_ns / 1e6))
        }
        Err(error) => {
            eprintln!("note: fio's paced reference failed ({error:#}); no disk ratio");
            None
        }
    }
}

/// The disk alone under the paced run's load, counted per message like the broker's
/// run (`floor::open_loop_sync`: [`PARTITIONS`] files, each taking its share of `rate`
/// messages/s).
struct Floor {
    p50_ms: f64,
    p99_ms: f64,
    /// Where its tail sits in time.
    tail: Concentration,
    /// p99 (ms) of the same syncs acknowledged in order across the files, as one
    /// producer connection sees them (`FloorRun::acknowledged_in_order`).
    in_order_p99_ms: f64,
}

/// Runs the open-loop floor (see [`Floor`]); `None` when it fails.
fn open_loop_floor(base: &Path, args: &KafkaArgs, rate: f64) -> Option<Floor> {
    let seconds = if args.quick { 3.0 } else { 10.0 };
    let per_file = rate / PARTITIONS as f64;
    crate::report::quiesce();
    match crate::floor::open_loop_sync(
        &base.join("floor"),
        PARTITIONS as usize,
        per_file,
        args.size,
        (seconds, PACED_WARM_UP),
    ) {
        Ok(run) => {
            let latency_us = &run.latency_us;
            let ms = |q: f64| latency_us.value_at_quantile(q) as f64 / 1e3;
            eprintln!(
                "open-loop floor, {PARTITIONS} files at {per_file:.0} msg/s each, every message written and fdatasynced before it counts: p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms",
                ms(0.5),
                ms(0.99),
                ms(0.999),
                latency_us.max() as f64 / 1e3
            );
            let tail = Concentration::of(latency_us, &run.timeline());
            eprintln!("open-loop floor: tail: {tail}");
            let (in_order_us, in_order_timeline) = match run.acknowledged_in_order() {
                Ok(in_order) => in_order,
                Err(error) => {
                    eprintln!("note: the open-loop floor's in-order view failed ({error:#})");
                    return None;
                }
            };
            let in_order_ms = |q: f64| in_order_us.value_at_quantile(q) as f64 / 1e3;
            eprintln!(
                "open-loop floor acknowledged in order across the {PARTITIONS} files (one connection): p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms; tail: {}",
                in_order_ms(0.5),
                in_order_ms(0.99),
                in_order_ms(0.999),
                in_order_us.max() as f64 / 1e3,
                Concentration::of(&in_order_us, &in_order_timeline)
            );
            Some(Floor { p50_ms: ms(0.5), p99_ms: ms(0.99), tail, in_order_p99_ms: in_order_ms(0.99) })
        }
        Err(error) => {
            eprintln!("note: the open-loop disk floor failed ({error:#}); no ratio");
            None
        }
    }
}

/// Runs the scenario and returns its figures (also printed as RESULT lines).
pub fn bench(args: &KafkaArgs) -> Result<Vec<Figure>> {
    let base = args.dir.clone().unwrap_or_else(|| crate::report::bench_dir().join("kafka"));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    if let Some(seconds) = args.seconds {
        return soak(&base, args, seconds);
    }
    let (ours, rate) = {
        let corelog = start_corelog(&base, &args.flush)?;
        measure(&corelog, args, args.rate)?
    };
    // The same full-speed produce over SASL_SSL (TLS 1.3, SCRAM-SHA-512), against the
    // plaintext run just made.
    let over_tls = match sasl_ssl_throughput(&base, args) {
        Ok(mb_per_s) => Some(mb_per_s),
        Err(error) => {
            eprintln!("note: corelog SASL_SSL run failed ({error:#}); no TLS ratio");
            None
        }
    };
    let mut peers = Vec::new();
    // A peer measured at page-cache durability (name, produce MB/s), if any.
    let mut unsynced_peer: Option<(String, f64)> = None;
    if let Some(tansu) = start_tansu(&base) {
        match tansu.and_then(|broker| measure(&broker, args, Some(rate))) {
            Ok((measured, _)) => peers.push(measured),
            Err(error) => eprintln!("note: tansu run failed ({error:#}); no tansu ratio"),
        }
    }
    if let Some(nats) = crate::nats::start(&base) {
        let count: u64 = if args.quick { 200_000 } else { 1_000_000 };
        let paced_count = ((rate * if args.quick { 3.0 } else { 10.0 }) as u64).max(1000);
        let run = nats.and_then(|server| {
            let run = crate::nats::measure(&server, count, paced_count, args.size, rate)?;
            Ok((run, server.sync_always))
        });
        match run {
            Ok((run, sync_always)) => {
                let name = if sync_always { "nats-jetstream-sync" } else { "nats-jetstream-pagecache" };
                let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
                let mb = |per_s: f64| per_s * args.size as f64 / 1e6;
                eprintln!(
                    "{name}: produce {:.0} msg/s ({:.0} MB/s), consume {:.0} msg/s; at {rate:.0} msg/s produce p50 {:.2} ms p99 {:.2} ms",
                    run.messages_per_s,
                    mb(run.messages_per_s),
                    run.consumed_per_s,
                    ms(&run.paced_latency_us, 0.5),
                    ms(&run.paced_latency_us, 0.99)
                );
                if !sync_always {
                    unsynced_peer = Some((name.to_string(), mb(run.messages_per_s)));
                }
                peers.push(Measured {
                    name,
                    produce_mb_per_s: mb(run.messages_per_s),
                    produce_p99_ms_full: ms(&run.full_latency_us, 0.99),
                    half_rate_p50_ms: ms(&run.paced_latency_us, 0.5),
                    half_rate_p99_ms: ms(&run.paced_latency_us, 0.99),
                    half_rate_tail: None,
                    consume_mb_per_s: mb(run.consumed_per_s),
                });
            }
            Err(error) => eprintln!("note: NATS JetStream run failed ({error:#}); no NATS ratio"),
        }
    }
    // The same broker acknowledging before it syncs (`--flush os`): its full-speed
    // throughput is the ratio at equal durability for a peer measured at page-cache
    // durability (NATS 2.9 cannot sync every write), and its paced run at the same rate
    // is what this client, this machine and corelog's request path give with no sync at
    // all (see `Unsynced`).
    let unsynced = if args.flush != "os" {
        match unsynced(&base, args, rate) {
            Ok(run) => Some(run),
            Err(error) => {
                eprintln!("note: corelog --flush os run failed ({error:#}); no page-cache ratios");
                None
            }
        }
    } else {
        None
    };
    let best = |value: fn(&Measured) -> f64, higher_is_better: bool| {
        peers.iter().map(|p| (p.name.to_string(), value(p))).reduce(|a, b| {
            if (b.1 > a.1) == higher_is_better {
                b
            } else {
                a
            }
        })
    };
    let mut figures = Vec::new();
    let mut emit = |scenario: &str, name: &str, value: f64, unit: &str, reference: Option<(String, f64)>| {
        let figure =
            Figure { scenario: scenario.into(), name: name.into(), value, unit: unit.into(), reference };
        println!("{}", figure.line());
        figures.push(figure);
    };
    emit("kafka-produce", "throughput", ours.produce_mb_per_s, "MB/s", best(|m| m.produce_mb_per_s, true));
    emit(
        "kafka-produce",
        "p99_full_speed",
        ours.produce_p99_ms_full,
        "ms",
        best(|m| m.produce_p99_ms_full, false),
    );
    let paced = match args.rate {
        Some(rate) => format!("kafka-produce-at-{:.0}k", rate / 1e3),
        None => "kafka-produce-half-rate".to_string(),
    };
    emit(&paced, "p50", ours.half_rate_p50_ms, "ms", best(|m| m.half_rate_p50_ms, false));
    emit(&paced, "p99", ours.half_rate_p99_ms, "ms", best(|m| m.half_rate_p99_ms, false));
    if let Some((disk_p50_ms, disk_p99_ms)) = disk_floor(&base, args, rate) {
        emit(
            &paced,
            "p50_vs_disk",
            ours.half_rate_p50_ms,
            "ms",
            Some(("fio-paced-fdatasync".into(), disk_p50_ms)),
        );
        emit(
            &paced,
            "p99_vs_disk",
            ours.half_rate_p99_ms,
            "ms",
            Some(("fio-paced-fdatasync".into(), disk_p99_ms)),
        );
    }
    if let Some(floor) = open_loop_floor(&base, args, rate) {
        emit(
            &paced,
            "p50_vs_disk_open_loop",
            ours.half_rate_p50_ms,
            "ms",
            Some(("open-loop-fdatasync".into(), floor.p50_ms)),
        );
        emit(
            &paced,
            "p99_vs_disk_open_loop",
            ours.half_rate_p99_ms,
            "ms",
            Some(("open-loop-fdatasync".into(), floor.p99_ms)),
        );
        emit(
            &paced,
            "p99_vs_disk_in_order",
            ours.half_rate_p99_ms,
            "ms",
            Some(("open-loop-fdatasync-in-order".into(), floor.in_order_p99_ms)),
        );
        // The share of the over-p99 deliveries in the worst 100 ms window, against the
        // disk's own under the same load (issue 17: at most 20%).
        if let Some(tail) = &ours.half_rate_tail {
            emit(
                &paced,
                "worst_window_share",
                tail.worst_window_pct(),
                "%",
                Some(("open-loop-fdatasync".into(), floor.tail.worst_window_pct())),
            );
        }
    }
    if let Some(run) = &unsynced {
        // The durable run's p99 against the same paced load acknowledged with no sync:
        // what the syncs add over everything else on the path.
        let reference = ("corelog-flush-os-paced".to_string(), run.paced_p99_ms);
        emit(&paced, "p99_vs_unsynced", ours.half_rate_p99_ms, "ms", Some(reference));
    }
    emit("kafka-consume", "throughput", ours.consume_mb_per_s, "MB/s", best(|m| m.consume_mb_per_s, true));
    if let Some(mb_per_s) = over_tls {
        let plaintext = ("corelog-plaintext".to_string(), ours.produce_mb_per_s);
        emit("kafka-produce-sasl-ssl", "throughput", mb_per_s, "MB/s", Some(plaintext));
    }
    if let Some((run, peer)) = unsynced.as_ref().zip(unsynced_peer) {
        emit("kafka-produce-unsynced", "throughput", run.produce_mb_per_s, "MB/s", Some(peer));
    }
    Ok(figures)
}

/// A fresh `corelog serve --flush os` (acknowledged once written, synced by the
/// kernel's writeback) under the kafka scenario's two loads.
struct Unsynced {
    /// Full-speed produce throughput: the durability of a peer that acknowledges before
    /// it syncs.
    produce_mb_per_s: f64,
    /// p99 (ms) of the paced run at the durable run's rate: everything on the path but
    /// the syncs (the client's `linger.ms` and pacing tick, the two processes sharing
    /// the machine's cores, corelog's request path). Not a strict floor: the kernel's
    /// writeback of the unsynced bytes takes the syncs' place and may throttle the
    /// broker's writes, or meet a device stall, when it lags (`p99_vs_unsynced` under 1).
    paced_p99_ms: f64,
}

/// Runs [`Unsynced`]'s two loads against a fresh `--flush os` broker.
fn unsynced(base: &Path, args: &KafkaArgs, rate: f64) -> Result<Unsynced> {
    let corelog = start_corelog(&base.join("unsynced"), "os")?;
    create_topic(corelog.address, "bench")?;
    let count: u64 = if args.quick { 200_000 } else { 1_000_000 };
    let run = produce(corelog.address, &[], "bench", count, args.size, None)?;
    let produce_mb_per_s = run.messages_per_s * args.size as f64 / 1e6;
    create_topic(corelog.address, "paced")?;
    crate::report::quiesce();
    let paced_count = ((rate * if args.quick { 3.0 } else { 10.0 }) as u64).max(1000);
    let paced = produce(corelog.address, &[], "paced", paced_count, args.size, Some(rate))?;
    let ms = |q: f64| paced.latency_us.value_at_quantile(q) as f64 / 1e3;
    eprintln!(
        "corelog --flush os: produce {:.0} msg/s ({produce_mb_per_s:.0} MB/s); at {rate:.0} msg/s produce p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        run.messages_per_s,
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    Ok(Unsynced { produce_mb_per_s, paced_p99_ms: ms(0.99) })
}

/// Full-speed produce throughput (MB/s) of a fresh `corelog serve` whose only listener
/// is SASL_SSL: a CA and a server certificate made with the `openssl` CLI, one SCRAM
/// user made with `corelog users add`, the client authenticating with SCRAM-SHA-512
/// over TLS (super user, so the ACL check is the real one's shortest path).
fn sasl_ssl_throughput(base: &Path, args: &KafkaArgs) -> Result<f64> {
    let dir = base.join("sasl-ssl");
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    let openssl = |args: &[&str]| -> Result<()> {
        let output =
            Command::new("openssl").args(args).current_dir(&pki).output().context("the openssl CLI")?;
        if !output.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    };
    std::fs::write(pki.join("server.cnf"), "subjectAltName=IP:127.0.0.1\n")?;
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=bench CA",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "server.cnf",
    ])?;
    let binary = std::env::current_exe()?.with_file_name("corelog");
    let data = dir.join("data");
    let data_arg = data.to_str().context("utf-8 path")?;
    let mut users = Command::new(&binary)
        .args(["users", "add", "--data-dir", data_arg, "--user", "bench", "--mechanism", "SCRAM-SHA-512"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("corelog users add")?;
    std::io::Write::write_all(&mut users.stdin.take().context("stdin")?, b"bench-password\n")?;
    if !users.wait()?.success() {
        bail!("corelog users add failed");
    }
    let address = free_address()?;
    let path = |name: &str| pki.join(name).to_str().map(str::to_string).context("utf-8 path");
    let mut child = Command::new(&binary)
        .args(["serve", "--data-dir", data_arg, "--flush", &args.flush])
        .args([
            "--listeners",
            &format!("SASL_SSL://{address}"),
            "--default-partitions",
            &PARTITIONS.to_string(),
        ])
        .args([
            "--tls-cert",
            &path("server.pem")?,
            "--tls-key",
            &path("server.key")?,
            "--super-users",
            "User:bench",
        ])
        .stderr(Stdio::null())
        .spawn()
        .context("starting corelog serve with SASL_SSL")?;
    wait_listening("corelog (SASL_SSL)", address, &mut child)?;
    let _broker = Broker { name: "corelog-sasl-ssl", child, address };
    let settings: Vec<(String, String)> = [
        ("security.protocol", "sasl_ssl".to_string()),
        ("sasl.mechanism", "SCRAM-SHA-512".to_string()),
        ("sasl.username", "bench".to_string()),
        ("sasl.password", "bench-password".to_string()),
        ("ssl.ca.location", path("ca.pem")?),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    create_topic_with(address, &settings, "bench")?;
    let count: u64 = if args.quick { 200_000 } else { 1_000_000 };
    let run = produce(address, &settings, "bench", count, args.size, None)?;
    let mb_per_s = run.messages_per_s * args.size as f64 / 1e6;
    eprintln!("corelog over SASL_SSL: produce {:.0} msg/s ({mb_per_s:.0} MB/s)", run.messages_per_s);
    Ok(mb_per_s)
}

/// `--seconds S`: corelog's paced produce (at `--rate`, or half of a full-speed run's
/// peak) for `S` seconds, reported per 10 s interval.
fn soak(base: &Path, args: &KafkaArgs, seconds: f64) -> Result<Vec<Figure>> {
    let corelog = start_corelog(base, &args.flush)?;
    let rate = match args.rate {
        Some(rate) => rate,
        None => {
            create_topic(corelog.address, "bench")?;
            let full = produce(corelog.address, &[], "bench", 200_000, args.size, None)?;
            full.messages_per_s / 2.0
        }
    };
    create_topic(corelog.address, "paced")?;
    crate::report::quiesce();
    let count = (rate * seconds) as u64;
    eprintln!("corelog: soak, {count} messages at {rate:.0} msg/s for {seconds:.0} s (open loop, acks=all)");
    let before = crate::steal::ticks();
    let paced = produce(corelog.address, &[], "paced", count, args.size, Some(rate))?;
    let steal = crate::steal::percent(before, crate::steal::ticks());
    eprintln!("corelog: paced tail: {}", Concentration::of(&paced.latency_us, &paced.timeline));
    if let Some(steal) = steal {
        eprintln!("corelog: paced run: the hypervisor stole {steal:.1}% of the CPU time");
    }
    crate::soak::dump_timeline("corelog-soak", &paced.timeline);
    let scenario = format!("kafka-produce-at-{:.0}k", rate / 1e3);
    let mut figures = Vec::new();
    for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
        let value = paced.latency_us.value_at_quantile(q) as f64 / 1e3;
        figures.push(Figure {
            scenario: format!("{scenario}-soak"),
            name: name.into(),
            value,
            unit: "ms".into(),
            reference: None,
        });
    }
    figures.extend(crate::soak::report("corelog", &scenario, &paced.timeline)?);
    for figure in &figures {
        println!("{}", figure.line());
    }
    Ok(figures)
}
