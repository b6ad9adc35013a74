//! `corelog-sim`: runs seeded scenarios of the real partition log against a simulated
//! faulty disk (see `docs/SIMULATION.md`).

use clap::Parser;
use engine::plant::{self, Plant};
use sim::scenario::{self, Outcome};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Steps per scenario unless `--steps` says otherwise.
const STEPS_DEFAULT: u64 = 400;
/// Seeds `--check-plants` tries per plant before calling it missed.
const PLANT_SEEDS_MAX: u64 = 2_000;

#[derive(Debug, Parser)]
#[command(
    name = "corelog-sim",
    about = "Deterministic simulation of corelog's partition log under crashes and disk faults"
)]
struct Args {
    /// Run this many seeds (from --first-seed) and report.
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u64>,
    /// Run seeds (from --first-seed) until this many seconds have passed, and report.
    #[arg(long, conflicts_with_all = ["seed", "seeds"])]
    seconds: Option<f64>,
    /// First seed of a --seeds run.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Replay one seed, printing every step.
    #[arg(long)]
    seed: Option<u64>,
    /// Steps per scenario.
    #[arg(long, default_value_t = STEPS_DEFAULT)]
    steps: u64,
    /// Arm a known bug (see --list-plants); a run then succeeds only if it is caught.
    #[arg(long)]
    plant: Option<String>,
    /// List the plants.
    #[arg(long)]
    list_plants: bool,
    /// Arm each plant in turn and check a run of seeds catches it.
    #[arg(long)]
    check_plants: bool,
    /// Where the simulated disk keeps its page cache (default: a fresh directory in
    /// /dev/shm, or the temporary directory).
    #[arg(long)]
    scratch: Option<PathBuf>,
}

fn scratch_dir(args: &Args) -> std::io::Result<tempfile::TempDir> {
    let builder = || {
        let mut builder = tempfile::Builder::new();
        builder.prefix("corelog-sim-");
        builder
    };
    match &args.scratch {
        Some(dir) => builder().tempdir_in(dir),
        None if std::path::Path::new("/dev/shm").is_dir() => builder().tempdir_in("/dev/shm"),
        None => builder().tempdir(),
    }
}

#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    failures: u64,
    steps: u64,
    crashes: u64,
    faults: u64,
    acks: u64,
    heals: u64,
}

impl Totals {
    fn add(&mut self, outcome: &Outcome) {
        self.seeds += 1;
        self.failures += u64::from(outcome.failure.is_some());
        self.steps += outcome.steps;
        self.crashes += outcome.crashes;
        self.faults += outcome.faults;
        self.acks += outcome.acks;
        self.heals += outcome.heals;
    }
}

/// Runs seeds `first..first + count`; with `stop_at_failure`, stops at the first one
/// that fails and returns it.
fn run_seeds(
    args: &Args,
    first: u64,
    count: u64,
    stop_at_failure: bool,
    totals: &mut Totals,
) -> std::io::Result<Option<(u64, String)>> {
    let scratch = scratch_dir(args)?;
    let mut first_failure = None;
    let deadline = args.seconds.map(|s| Instant::now() + std::time::Duration::from_secs_f64(s));
    for seed in first..first.saturating_add(count) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let outcome = scenario::run(seed, args.steps, &scratch.path().join("disk"), false);
        totals.add(&outcome);
        if let Some(failure) = outcome.failure {
            if !stop_at_failure {
                println!("FAIL seed {seed}: {failure} (replay: corelog-sim --seed {seed})");
            }
            first_failure.get_or_insert((seed, failure));
            if stop_at_failure {
                break;
            }
        }
    }
    Ok(first_failure)
}

fn print_result(totals: &Totals, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "sim: {} seeds in {seconds:.1} s ({:.0} seeds/min), {} acknowledged appends, {} heals",
        totals.seeds,
        totals.seeds as f64 * 60.0 / seconds.max(1e-9),
        totals.acks,
        totals.heals
    );
    println!(
        "RESULT sim seeds={} failures={} steps={} crashes={} faults={}",
        totals.seeds, totals.failures, totals.steps, totals.crashes, totals.faults
    );
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Engine assertions that fire under simulation are failures the run reports with
    // its seed; their default panic message would only repeat it.
    if args.seed.is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    if args.list_plants {
        for plant in Plant::ALL {
            println!("{:<28} {}", plant.name(), plant.describe());
        }
        return ExitCode::SUCCESS;
    }
    let armed = match args.plant.as_deref().map(|name| Plant::from_name(name).ok_or(name)) {
        Some(Err(name)) => {
            eprintln!("corelog-sim: no plant called {name:?} (see --list-plants)");
            return ExitCode::from(2);
        }
        Some(Ok(plant)) => Some(plant),
        None => None,
    };
    plant::arm(armed.as_slice());
    let started = Instant::now();
    if let Some(seed) = args.seed {
        let scratch = match scratch_dir(&args) {
            Ok(dir) => dir,
            Err(error) => {
                eprintln!("corelog-sim: scratch directory: {error}");
                return ExitCode::FAILURE;
            }
        };
        let outcome = scenario::run(seed, args.steps, &scratch.path().join("disk"), true);
        let mut totals = Totals::default();
        totals.add(&outcome);
        print_result(&totals, started);
        return match (outcome.failure, armed) {
            (None, None) | (Some(_), Some(_)) => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        };
    }
    let mut totals = Totals::default();
    if args.check_plants {
        let mut missed = 0;
        for plant in Plant::ALL {
            plant::arm(&[plant]);
            let before = totals.seeds;
            let plant_started = Instant::now();
            match run_seeds(&args, args.first_seed, PLANT_SEEDS_MAX, true, &mut totals) {
                Ok(Some((seed, failure))) => println!(
                    "plant {:<26} caught by seed {seed} ({} seeds, {:.2} s): {failure}",
                    plant.name(),
                    totals.seeds - before,
                    plant_started.elapsed().as_secs_f64()
                ),
                Ok(None) => {
                    missed += 1;
                    println!("plant {:<26} MISSED in {PLANT_SEEDS_MAX} seeds", plant.name());
                }
                Err(error) => {
                    eprintln!("corelog-sim: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        plant::arm(&[]);
        println!("RESULT sim-plants plants={} caught={}", Plant::ALL.len(), Plant::ALL.len() - missed);
        return if missed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let count = match (args.seeds, args.seconds) {
        (Some(seeds), _) => seeds,
        (None, Some(_)) => u64::MAX,
        (None, None) => 100,
    };
    let failure = match run_seeds(&args, args.first_seed, count, armed.is_some(), &mut totals) {
        Ok(failure) => failure,
        Err(error) => {
            eprintln!("corelog-sim: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(plant), Some((seed, failure))) = (armed, &failure) {
        println!("plant {} caught by seed {seed}: {failure}", plant.name());
    }
    print_result(&totals, started);
    match (armed, failure) {
        (None, None) | (Some(_), Some(_)) => ExitCode::SUCCESS,
        (Some(plant), None) => {
            println!("plant {} was NOT caught", plant.name());
            ExitCode::FAILURE
        }
        (None, Some(_)) => ExitCode::FAILURE,
    }
}
