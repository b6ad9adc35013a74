//! NATS JetStream as a peer of `corelog-bench kafka`.
//!
//! JetStream does not speak the Kafka protocol, so it is driven by its own client
//! (`async-nats`) with the same workload: 1 KiB messages published to a file-backed
//! stream and acknowledged (the JetStream equivalent of acks=all on one node), at full
//! speed with a bounded window of unacknowledged publishes, then open loop at corelog's
//! half rate (latency from the scheduled send time to the ack), then read back with a
//! pull consumer.
//!
//! Durability: NATS 2.10+ can fsync every write (`sync_interval: always`), which is
//! what a fair comparison with `--flush group` needs. Debian's `nats-server` 2.9 has no
//! such option and syncs its files in the background, so its figures are at page-cache
//! durability; the harness says which it ran.

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Unacknowledged publishes at full speed.
pub const PUBLISH_WINDOW: usize = 4096;

/// A running nats-server; stopped on drop.
pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    /// Whether it fsyncs every write.
    pub sync_always: bool,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn version() -> Option<(u32, u32)> {
    let output = Command::new("nats-server").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().rsplit('v').next()?.trim(); // "nats-server: v2.9.10"
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Starts `nats-server -js` with file storage under `dir`, or `None` (with a note on how
/// to install it) when it is not on PATH.
pub fn start(dir: &Path) -> Option<Result<NatsServer>> {
    let Some((major, minor)) = version() else {
        eprintln!("note: nats-server not found on PATH; install it with `apt-get install nats-server` for a NATS JetStream ratio");
        return None;
    };
    Some((|| {
        let address = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let store = dir.join("nats");
        std::fs::create_dir_all(&store)?;
        let sync_always = (major, minor) >= (2, 10);
        let config = format!(
            "listen: {address}\njetstream {{\n  store_dir: \"{}\"\n  {}\n}}\nmax_payload: 8MB\n",
            store.display(),
            if sync_always { "sync_interval: always" } else { "" }
        );
        let config_path = dir.join("nats.conf");
        std::fs::write(&config_path, config)?;
        let mut child = Command::new("nats-server")
            .args(["-c", config_path.to_str().context("utf-8 path")?])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(address).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("nats-server exited before listening ({status})");
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !sync_always {
            eprintln!(
                "note: nats-server {major}.{minor} cannot fsync every write (sync_interval arrived in 2.10): \
                 its figures are at page-cache durability, corelog's at --flush group"
            );
        }
        Ok(NatsServer { child, url: format!("nats://{address}"), sync_always })
    })())
}

/// What one NATS run measured.
pub struct NatsRun {
    /// Full-speed publishes acknowledged per second.
    pub messages_per_s: f64,
    /// Full-speed publish latency (µs).
    pub full_latency_us: Histogram<u64>,
    /// Open-loop publish latency at the given rate (µs).
    pub paced_latency_us: Histogram<u64>,
    /// Messages read back per second.
    pub consumed_per_s: f64,
}

/// Runs the workload: `count` messages at full speed, `paced_count` at `rate`.
pub fn measure(server: &NatsServer, count: u64, paced_count: u64, size: usize, rate: f64) -> Result<NatsRun> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = async_nats::connect(&server.url).await.context("connecting to nats-server")?;
        let js = async_nats::jetstream::new(client);
        let payload = bytes::Bytes::from(vec![b'x'; size]);
        let mut full_latency_us = Histogram::<u64>::new(3)?;
        let mut paced_latency_us = Histogram::<u64>::new(3)?;
        for (subject, name) in [("bench", "BENCH"), ("paced", "PACED")] {
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.to_string(),
                subjects: vec![subject.to_string()],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating stream {name}: {e}"))?;
        }
        let phase = |name: &str| eprintln!("nats: {name}");
        phase("full speed");
        // Full speed, a bounded window of unacknowledged publishes.
        let started = Instant::now();
        let mut acks = futures_util::stream::FuturesUnordered::new();
        for _ in 0..count {
            while acks.len() >= PUBLISH_WINDOW {
                let (sent, ack): (Instant, Result<_, _>) = acks.next().await.expect("non-empty");
                ack.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                full_latency_us.record(sent.elapsed().as_micros() as u64)?;
            }
            let ack = js.publish("bench", payload.clone()).await.map_err(|e| anyhow::anyhow!("publish: {e}"))?;
            let sent = Instant::now();
            acks.push(async move { (sent, ack.await) });
        }
        while let Some((sent, ack)) = acks.next().await {
            ack.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            full_latency_us.record(sent.elapsed().as_micros() as u64)?;
        }
        let messages_per_s = count as f64 / started.elapsed().as_secs_f64();
        phase(&format!("open loop at {rate:.0}/s after {messages_per_s:.0} msg/s at full speed"));
        // Open loop at `rate`: latency from the scheduled time.
        let started = Instant::now();
        let mut pending = futures_util::stream::FuturesUnordered::new();
        for i in 0..paced_count {
            let at = started + Duration::from_secs_f64(i as f64 / rate);
            loop {
                let now = Instant::now();
                if now >= at {
                    break;
                }
                tokio::select! {
                    Some((scheduled, ack)) = pending.next(), if !pending.is_empty() => {
                        let (scheduled, ack): (Instant, Result<_, async_nats::jetstream::context::PublishError>) = (scheduled, ack);
                        ack.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                        paced_latency_us.record(scheduled.elapsed().as_micros() as u64)?;
                    }
                    _ = tokio::time::sleep(at - now) => {}
                }
            }
            // Keep collecting acknowledgements while the publish waits: the client
            // bounds unacknowledged publishes, and behind schedule nothing else polls them.
            let publish = js.publish("paced", payload.clone());
            tokio::pin!(publish);
            let ack = loop {
                tokio::select! {
                    ack = &mut publish => break ack.map_err(|e| anyhow::anyhow!("publish: {e}"))?,
                    Some((scheduled, ack)) = pending.next(), if !pending.is_empty() => {
                        let (scheduled, ack): (Instant, Result<_, async_nats::jetstream::context::PublishError>) = (scheduled, ack);
                        ack.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                        paced_latency_us.record(scheduled.elapsed().as_micros() as u64)?;
                    }
                }
            };
            pending.push(async move { (at, ack.await) });
        }
        while let Some((scheduled, ack)) = pending.next().await {
            ack.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            paced_latency_us.record(scheduled.elapsed().as_micros() as u64)?;
        }
        phase("read back");
        // Read back with a pull consumer.
        let stream = js.get_stream("BENCH").await.map_err(|e| anyhow::anyhow!("stream: {e}"))?;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("reader".into()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("consumer: {e}"))?;
        let started = Instant::now();
        let mut messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("messages: {e}"))?;
        let mut received = 0u64;
        while received < count {
            match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
                Ok(Some(Ok(_))) => received += 1,
                Ok(Some(Err(error))) => bail!("reading back: {error}"),
                Ok(None) | Err(_) => bail!("read back {received} of {count} messages"),
            }
        }
        let consumed_per_s = count as f64 / started.elapsed().as_secs_f64();
        Ok(NatsRun { messages_per_s, full_latency_us, paced_latency_us, consumed_per_s })
    })
}
