//! `corelog-sim` as a user runs it: a replayed seed prints its steps and is exactly
//! the same each time; a seed run reports its totals; every plant is caught.

use std::process::Command;

fn sim(args: &[&str]) -> (bool, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_corelog-sim")).args(args).output().expect("corelog-sim runs");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The scratch directory's random name is the only thing allowed to differ.
fn without_scratch_names(text: &str) -> String {
    text.split("corelog-sim-")
        .enumerate()
        .map(
            |(i, part)| {
                if i == 0 {
                    part
                } else {
                    part.trim_start_matches(|c: char| c.is_ascii_alphanumeric())
                }
            },
        )
        .collect::<Vec<_>>()
        .join("corelog-sim-")
        .lines()
        .filter(|line| !line.starts_with("sim: ")) // timing
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn given_a_seed_when_replayed_twice_then_it_prints_the_same_steps_and_passes() {
    let (ok, first) = sim(&["--seed", "7"]);
    assert!(ok, "{first}");
    let (_, second) = sim(&["--seed", "7"]);
    let steps = first.lines().filter(|line| line.contains("placed") || line.contains("CRASH")).count();
    assert!(steps > 10, "a replay prints its steps:\n{first}");
    assert_eq!(without_scratch_names(&first), without_scratch_names(&second), "a seed replays exactly");
    assert!(
        first.trim_end().lines().last().is_some_and(|l| l.starts_with("RESULT sim seeds=1 failures=0 ")),
        "{first}"
    );
}

#[test]
fn given_seeds_then_the_result_line_counts_steps_crashes_and_faults() {
    let (ok, text) = sim(&["--seeds", "200"]);
    assert!(ok, "{text}");
    let result = text.lines().last().expect("a RESULT line");
    let field = |name: &str| -> u64 {
        let value = result.split(' ').find_map(|kv| kv.strip_prefix(&format!("{name}="))).expect(name);
        value.parse().expect("a number")
    };
    assert_eq!((field("seeds"), field("failures")), (200, 0), "{text}");
    assert!(field("steps") >= 200 * 100 && field("crashes") > 200 && field("faults") > 200, "{result}");
}

#[test]
fn given_each_plant_then_a_run_of_seeds_catches_it_and_replays_it() {
    let (ok, list) = sim(&["--list-plants"]);
    assert!(ok);
    let plants: Vec<&str> = list.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert!(plants.len() >= 6, "{list}");
    for plant in plants {
        let (ok, text) = sim(&["--seeds", "300", "--plant", plant]);
        assert!(ok, "plant {plant} not caught:\n{text}");
        let seed = text
            .lines()
            .find_map(|line| line.strip_prefix(&format!("plant {plant} caught by seed ")))
            .and_then(|rest| rest.split(':').next())
            .unwrap_or_else(|| panic!("{text}"));
        let (replayed, replay) = sim(&["--seed", seed, "--plant", plant]);
        assert!(
            replayed && replay.contains("FAILURE"),
            "seed {seed} replays the catch of {plant}:\n{replay}"
        );
    }
    let (ok, text) = sim(&["--plant", "no-such-bug"]);
    assert!(!ok && text.contains("no plant called"), "{text}");
}
