//! `corelog produce` and `corelog consume` against a real `corelog serve`.

mod common;

use common::Server;

fn corelog(args: &[&str], stdin: &str) -> (bool, String, String) {
    common::corelog_with_stdin(args, stdin)
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn produce_then_consume_from_earliest_and_as_a_group_that_resumes_where_it_committed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--default-partitions", "3"]);
    let address = server.brokers();
    let lines: Vec<String> = (0..60).map(|i| format!(r#"{{"user_id":"u{}","n":{i}}}"#, i % 7)).collect();
    let input = lines.join("\n") + "\n";
    let (ok, _, stderr) =
        corelog(&["produce", "--brokers", &address, "--topic", "cli", "--key-field", "user_id"], &input);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("60 records acknowledged"), "{stderr}");

    let (ok, stdout, stderr) =
        corelog(&["consume", "--brokers", &address, "--topic", "cli", "--count", "60"], "");
    assert!(ok, "{stderr}");
    let mut expected = lines.clone();
    expected.sort();
    assert_eq!(sorted_lines(&stdout), expected, "every line back, byte for byte");

    let group = ["consume", "--brokers", &address, "--topic", "cli", "--group", "g1", "--count"];
    let (ok, first, stderr) = corelog(&[&group[..], &["25"]].concat(), "");
    assert!(ok, "{stderr}");
    let (ok, second, stderr) = corelog(&[&group[..], &["35"]].concat(), "");
    assert!(ok, "{stderr}");
    let mut both = sorted_lines(&first);
    both.extend(sorted_lines(&second));
    both.sort();
    assert_eq!(both, expected, "the second member resumed from the first one's commits: no loss, no repeat");

    let (ok, _, stderr) =
        corelog(&["produce", "--brokers", &address, "--topic", "cli", "--key-field", "user_id"], "oops\n");
    assert!(!ok);
    assert!(stderr.contains("line 1") && stderr.trim().lines().count() == 1, "{stderr}");
    let (ok, _, stderr) =
        corelog(&["consume", "--brokers", &address, "--topic", "cli", "--from", "yesterday"], "");
    assert!(!ok && stderr.contains("expected earliest, latest or an offset"), "{stderr}");
}
