//! `corelog-bench`: measures corelog against the machine's limits and against peers.
//!
//! Each scenario prints its figures as `RESULT` lines (see `report`), with the
//! reference measured in the same run and the ratio, and writes them to
//! `target/bench/<scenario>.json`, with a bar chart of the ratios in
//! `target/bench/<scenario>.svg`. `--quick` keeps a scenario under a minute.
//! Scenarios arrive with their issues: `append` (engine core) and `kafka` (Kafka
//! protocol), `land` (lander), `batch` (batch runner), `e2e` (stream queries).

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod append;
mod batch;
mod e2e;
mod fio;
mod floor;
mod kafka;
mod land;
mod nats;
mod report;
mod soak;
mod steal;
mod tail;

use clap::{Parser, Subcommand};

/// The same allocator as the `corelog` binary, so figures measure the same code.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// corelog-bench: figures, references and ratios.
#[derive(Debug, Parser)]
#[command(name = "corelog-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Embedded append throughput (1..N partitions, 1 KiB and 100 B records, each flush
    /// mode) and group-commit latency, against fio on the same disk.
    Append(append::AppendArgs),
    /// Produce/consume throughput and produce latency over the Kafka protocol with
    /// rdkafka, against peer brokers (tansu) run on the same machine.
    Kafka(kafka::KafkaArgs),
    /// Lander events/s against DuckDB writing the same rows to Parquet, and landing
    /// lag at a fixed append rate against the configured bound.
    Land(land::LandArgs),
    /// The hourly batch job against DuckDB's SQL, and with a straggler and a hot key.
    Batch(batch::BatchArgs),
    /// Event creation to decision readable by a Kafka consumer, open loop at fixed
    /// rates, against the query run as an external consumer.
    E2e(e2e::E2eArgs),
}

fn report_files(group: &str, figures: &[report::Figure]) -> anyhow::Result<()> {
    let json = report::write_json(group, figures)?;
    let svg = report::write_svg(group, figures)?;
    eprintln!("results written to {} and {}", json.display(), svg.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Append(args) => {
            let figures = append::bench(&args)?;
            report_files("append", &figures)?;
        }
        Scenario::Kafka(args) => {
            let figures = kafka::bench(&args)?;
            report_files("kafka", &figures)?;
        }
        Scenario::Batch(args) => {
            let figures = batch::bench(&args)?;
            report_files("batch", &figures)?;
        }
        Scenario::E2e(args) => {
            let figures = e2e::bench(&args)?;
            report_files("e2e", &figures)?;
        }
        Scenario::Land(args) => {
            let figures = land::bench(&args)?;
            report_files("land", &figures)?;
        }
    }
    Ok(())
}
