//! Crash safety of the security store: `corelog users add` and `corelog acl add` are
//! SIGKILLed again and again at random moments of their read-modify-write, and after
//! every kill the files still read (the old contents or the new, never a torn file),
//! no acknowledged change is lost, and the next command works.

use rand::{Rng, SeedableRng};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn corelog() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corelog"))
}

fn listed(args: &[&str]) -> Vec<String> {
    let output = corelog().args(args).output().unwrap();
    assert!(output.status.success(), "{args:?} after a kill: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn users_and_acl_commands_killed_mid_write_leave_readable_files_and_lose_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let (mut acked_acls, mut acked_users) = (0usize, 0usize);
    let mut killed = 0usize;
    for round in 0..40 {
        let topic = format!("t{round}");
        let user = format!("u{round}");
        let mut acl = corelog()
            .args([
                "acl",
                "add",
                "--data-dir",
                data,
                "--principal",
                "User:a",
                "--operation",
                "Read",
                "--topic",
                &topic,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut users = corelog()
            .args(["users", "add", "--data-dir", data, "--user", &user])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        users.stdin.take().unwrap().write_all(b"password\n").unwrap();
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..60_000)));
        let _ = acl.kill();
        let _ = users.kill();
        let (acl_ok, users_ok) = (acl.wait().unwrap().success(), users.wait().unwrap().success());
        killed += usize::from(!acl_ok) + usize::from(!users_ok);
        acked_acls += usize::from(acl_ok);
        acked_users += usize::from(users_ok);
        let acls = listed(&["acl", "list", "--data-dir", data]);
        let names = listed(&["users", "list", "--data-dir", data]);
        // Every acknowledged change is there; an unacknowledged one may be too.
        assert!(acls.len() >= acked_acls && acls.len() <= round + 1, "round {round}: {acls:?}");
        assert!(names.len() >= acked_users && names.len() <= round + 1, "round {round}: {names:?}");
        acked_acls = acls.len();
        acked_users = names.len();
    }
    // The commands still work on what the kills left.
    let output = corelog()
        .args(["acl", "add", "--data-dir", data, "--principal", "User:b", "--operation", "All", "--cluster"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(listed(&["acl", "list", "--data-dir", data]).iter().any(|l| l.contains("User:b")));
    assert!(acked_acls > 0 && acked_users > 0, "some writes completed before their kill");
    assert!(killed > 0, "some commands were killed before they finished");
}
