//! The `corelog` binary: parses the command line and runs a subcommand.

use clap::{Parser, Subcommand};

/// mimalloc: the batch jobs allocate per key and per morsel from several threads, where
/// glibc's allocator spent a tenth of `hourly`'s time (page faults, consolidation).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

/// corelog: a durable, partitioned log with a real-time and a batch path.
#[derive(Debug, Parser)]
#[command(name = "corelog", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded engine end to end on generated payments and print a report.
    Demo(corelog_tools::demo::DemoArgs),
    /// Run the engine as a Kafka-protocol broker until SIGTERM/SIGINT.
    Serve(corelog_tools::serve::ServeArgs),
    /// Land segment files as hour-partitioned Parquet, exactly once.
    Land(corelog_tools::land::LandArgs),
    /// Run a batch job over landed Parquet (work stealing, speculation, retries).
    Batch(corelog_tools::batch::BatchArgs),
    /// Produce payments at an exact offered rate (open loop), with planted rings and late events.
    Gen(corelog_tools::gen::GenArgs),
    /// Produce one record per stdin line (acks=all, idempotent).
    Produce(corelog_tools::client::ProduceArgs),
    /// Print records, one value per line, optionally as a consumer-group member.
    Consume(corelog_tools::client::ConsumeArgs),
    /// Manage SCRAM users of a data directory (password on stdin).
    Users(corelog_tools::access::UsersArgs),
    /// Manage Kafka ACLs of a data directory.
    Acl(corelog_tools::access::AclArgs),
    /// Dump and check a segment, index or time-index file, or a partition directory.
    Inspect {
        /// A .log, .index or .timeindex file, or a partition directory.
        path: PathBuf,
        /// Also decode and print every record (uncompressed batches).
        #[arg(long)]
        records: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => corelog_tools::demo::run(&args).map(|_| ExitCode::SUCCESS),
        Command::Serve(args) => corelog_tools::serve::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Batch(args) => corelog_tools::batch::run(&args).map(|_| ExitCode::SUCCESS),
        Command::Land(args) => corelog_tools::land::run(&args).map(|_| ExitCode::SUCCESS),
        Command::Gen(args) => corelog_tools::gen::run(&args, |_| {}).map(|report| {
            corelog_tools::gen::print_report(&args, &report);
            ExitCode::SUCCESS
        }),
        Command::Produce(args) => corelog_tools::client::produce(&args).map(|sent| {
            eprintln!("corelog produce: {sent} records acknowledged");
            ExitCode::SUCCESS
        }),
        Command::Consume(args) => {
            corelog_tools::client::consume(&args, &mut std::io::stdout().lock()).map(|_| ExitCode::SUCCESS)
        }
        Command::Users(args) => corelog_tools::access::users(&args, std::io::stdin().lock()).map(|out| {
            print!("{out}");
            ExitCode::SUCCESS
        }),
        Command::Acl(args) => corelog_tools::access::acl(&args).map(|out| {
            print!("{out}");
            ExitCode::SUCCESS
        }),
        Command::Inspect { path, records } => {
            corelog_tools::inspect::run(&path, records, &mut std::io::stdout().lock()).map(|findings| {
                if let Some(first) = findings.problems.first() {
                    eprintln!(
                        "corelog: inspect found {} problem(s); first: {first}",
                        findings.problems.len()
                    );
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            })
        }
    };
    result.unwrap_or_else(|error| {
        eprintln!("corelog: error: {error:#}");
        ExitCode::FAILURE
    })
}
