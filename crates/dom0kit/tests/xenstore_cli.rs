//! Our xenstore command line against Debian's xenstore-utils, both talking
//! to Debian's C xenstored (started by `../shared/peers/xenstored-peer`):
//! the same commands must print the same bytes, exit the same way, and
//! leave the store the same.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{finish_within, start_c_xenstored, start_our_xenstored, start_our_xenstored_with};

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Runs a tool named `xenstore-MODE` (argv[0] exactly that): Debian's from
/// /usr/bin, or ours, a link to the dom0kit binary.
fn tool(ours: bool, mode: &str, args: &[&str], socket: &Path) -> Command {
    let name = format!("xenstore-{mode}");
    let mut c = if ours {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("xs-links");
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join(&name);
        if !link.exists() {
            std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dom0kit"), &link).unwrap();
        }
        Command::new(link)
    } else {
        let path = Path::new("/usr/bin").join(&name);
        assert!(
            path.exists(),
            "{} is missing: install xenstore-utils",
            path.display()
        );
        Command::new(path)
    };
    c.arg0(&name).args(args).env("XENSTORED_PATH", socket);
    c
}

fn run(ours: bool, mode: &str, args: &[&str], socket: &Path) -> (String, String, i32) {
    let out = tool(ours, mode, args, socket).output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn our_cli_matches_xenstore_utils_on_c_xenstored() {
    let peer = start_c_xenstored("cli");
    let s = &peer.socket;
    let seed = [
        "/cmp/a",
        "1",
        "/cmp/b/c",
        "x y",
        "/cmp/e",
        "a\\tb\\001c\\x7fd\\\\e\\nf\\x7fg\\t",
        "/cmp/long",
        &"v".repeat(120),
        "/cmp/deep/er/and/deeper/still/name-that-is-rather-long-indeed-to-test-truncation",
        "z",
    ];
    assert_eq!(run(false, "write", &seed, s).2, 0);

    let reads: &[(&str, &[&str])] = &[
        ("read", &["/cmp/a", "/cmp/e"]),
        ("read", &["-p", "/cmp/a", "/cmp/b/c"]),
        ("read", &["-R", "/cmp/e"]),
        ("read", &["/cmp/a", "/cmp/nope", "/cmp/b/c"]),
        ("read", &[]),
        ("read", &["-t", "/cmp/a"]),
        ("read", &["-x", "/cmp/a"]),
        ("read", &["/cmp/a", "--prefix"]),
        ("list", &["/cmp"]),
        ("list", &["-p", "/cmp", "/cmp/b"]),
        ("list", &["/cmp/nope"]),
        ("ls", &["/cmp"]),
        ("ls", &["-f", "/cmp"]),
        ("ls", &["-p", "/cmp"]),
        ("ls", &["-fp", "/cmp"]),
        ("ls", &["/cmp/nope"]),
        ("exists", &["/cmp/a"]),
        ("exists", &["/cmp/a", "/cmp/nope"]),
        ("exists", &[]),
        ("rm", &["-p", "/cmp/a"]),
        ("write", &["/cmp/odd"]),
        ("watch", &[]),
    ];
    assert_same(reads, |mode, args| {
        (run(false, mode, args, s), run(true, mode, args, s))
    });
}

type Run = (String, String, i32);

/// Runs every command of `script` two ways and requires the same stdout,
/// stderr and status from both.
fn assert_same(script: &[(&str, &[&str])], mut both: impl FnMut(&str, &[&str]) -> (Run, Run)) {
    let mut diffs = Vec::new();
    for (mode, args) in script {
        let (a, b) = both(mode, args);
        if a != b {
            diffs.push(format!(
                "xenstore-{mode} {args:?}\n  first:  {a:?}\n  second: {b:?}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn our_writes_rms_and_chmods_leave_the_store_as_xenstore_utils_do() {
    let peer = start_c_xenstored("mutate");
    let s = &peer.socket;
    for (ours, root) in [(false, "/theirs"), (true, "/ours")] {
        let p = |x: &str| format!("{root}{x}");
        let steps: Vec<(&str, Vec<String>)> = vec![
            (
                "write",
                vec![
                    p("/a/b"),
                    "1".into(),
                    p("/a/c"),
                    "two\\x41".into(),
                    p("/t/x/y/z"),
                    "".into(),
                ],
            ),
            ("write", vec!["-R".into(), p("/raw"), "a\\tb".into()]),
            ("rm", vec!["-t".into(), p("/t/x/y/z")]),
            ("rm", vec![p("/a/c")]),
            // C xenstored refuses permissions naming domains it does not
            // know (ENOENT), and only dom0 exists here.
            ("chmod", vec![p("/a"), "r0".into()]),
            ("chmod", vec!["-r".into(), p("/a"), "b0".into()]),
            ("chmod", vec!["-u".into(), p("/a/b"), "w0".into()]),
            ("rm", vec![p("/gone/child")]),
        ];
        for (mode, args) in &steps {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (_, err, code) = run(ours, mode, &args, s);
            let expect_fail = args.last().is_some_and(|a| a.ends_with("/gone/child"));
            assert_eq!(
                code != 0,
                expect_fail,
                "xenstore-{mode} {args:?} (ours: {ours}): {err}"
            );
        }
    }
    let (theirs, _, _) = run(false, "ls", &["-p", "/theirs"], s);
    let (ours, _, _) = run(false, "ls", &["-p", "/ours"], s);
    assert!(!theirs.is_empty());
    assert_eq!(theirs, ours, "both trees end the same");
}

#[test]
fn our_watch_prints_the_events_xenstore_watch_prints() {
    let peer = start_c_xenstored("watch");
    let s = &peer.socket;
    let spawn = |ours: bool, dir: &str| -> Child {
        tool(ours, "watch", &["-n", "3", dir], s)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let theirs = spawn(false, "/w1");
    let ours = spawn(true, "/w2");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(run(false, "write", &["/w1/x", "1", "/w2/x", "1"], s).2, 0);
    assert_eq!(
        run(false, "write", &["/w1/y/z", "2", "/w2/y/z", "2"], s).2,
        0
    );
    let t = finish_within(theirs, 5);
    let o = finish_within(ours, 5);
    assert_eq!(t.replace("/w1", "/W"), o.replace("/w2", "/W"));
    assert_eq!(t.lines().count(), 3, "{t}");
}

#[test]
fn xenstore_utils_see_our_daemon_as_they_see_c_xenstored() {
    let peer = start_c_xenstored("daemon");
    let ours = start_our_xenstored("daemon");
    let script: &[(&str, &[&str])] = &[
        ("ls", &[]),
        (
            "write",
            &[
                "/d/a",
                "1",
                "/d/b/c",
                "x y",
                "/d/e",
                "a\\tb\\001",
                "/d/z",
                "",
            ],
        ),
        ("read", &["/d/a", "/d/e", "/d/b"]),
        ("read", &["/d/nope"]),
        ("read", &["/nope/deeper"]),
        ("read", &["relative/path"]),
        ("read", &["/bad//path"]),
        ("read", &["/trailing/"]),
        ("write", &["/bad path", "1"]),
        ("write", &["@special", "1"]),
        ("list", &["/d"]),
        ("list", &["-p", "/d/b"]),
        ("list", &["/d/nope"]),
        ("ls", &["-p", "/d"]),
        ("ls", &["-f", "/"]),
        ("exists", &["/d/b/c"]),
        ("exists", &["/d/none"]),
        ("rm", &["/d/none"]),
        ("rm", &["/d/none/deeper"]),
        ("rm", &["/"]),
        ("rm", &["-t", "/d/b/c"]),
        ("chmod", &["/d/a", "r0"]),
        ("chmod", &["/d/nope", "r0"]),
        ("chmod", &["-r", "/d", "b0"]),
        ("ls", &["-p", "/"]),
        ("write", &["/local/domain/0/rel", "r"]),
        ("read", &["rel"]),
        ("ls", &["-fp", "/"]),
    ];
    // First C xenstored, second ours.
    assert_same(script, |mode, args| {
        (
            run(false, mode, args, &peer.socket),
            run(false, mode, args, &ours.socket),
        )
    });
}

#[test]
fn xenstore_watch_sees_our_daemon_as_it_sees_c_xenstored() {
    let peer = start_c_xenstored("daemon-watch");
    let ours = start_our_xenstored("daemon-watch");
    let mut outputs = Vec::new();
    for s in [&peer.socket, &ours.socket] {
        assert_eq!(
            run(false, "write", &["/w/keep", "0", "/w/sub/x", "1"], s).2,
            0
        );
        // Five events: the first, x, y/z (not its new parent y), the
        // chmod, and the removal of an ancestor.
        let watcher = tool(false, "watch", &["-n", "5", "/w/sub"], s)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        for (mode, args) in [
            ("write", &["/w/sub/x", "2"][..]),
            ("write", &["/w/keep", "1"][..]),
            ("write", &["/w/sub/y/z", "3"][..]),
            ("chmod", &["/w/sub", "b0"][..]),
            ("rm", &["/w"][..]),
        ] {
            assert_eq!(run(false, mode, args, s).2, 0);
        }
        outputs.push(finish_within(watcher, 5));
    }
    assert_eq!(outputs[0], outputs[1], "C then ours");
}

#[test]
fn bench_xenstore_prints_every_row_for_each_daemon() {
    let peer = start_c_xenstored("bench");
    let ours = start_our_xenstored("bench");
    let out = Command::new(env!("CARGO_BIN_EXE_dom0kit"))
        .args(["bench", "xenstore", "--quick", "--socket"])
        .arg(format!("C={}", peer.socket.display()))
        .arg("--socket")
        .arg(format!("ours={}", ours.socket.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in ["pipelined", "transactions", "fan-out", "DIRECTORY_PART"] {
        let line = text
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("{row}: {text}"));
        assert!(line.contains("ours/C:") && !line.contains("NaN"), "{line}");
    }
}

#[test]
fn pyxs_sees_our_daemon_as_it_sees_c_xenstored() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/pyxs_scenario.py");
    let python = Path::new("/usr/bin/python3");
    let session = |socket: &Path| {
        let out = Command::new(python)
            .arg(&script)
            .arg(socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pyxs on {}: {}",
            socket.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let peer = start_c_xenstored("pyxs");
    let ours = start_our_xenstored("pyxs");
    let (theirs, mine) = (session(&peer.socket), session(&ours.socket));
    assert_eq!(theirs, mine);
    assert!(mine.contains("('conflicting commit', False)"), "{mine}");
    assert!(
        mine.contains("('event', Event(path=b'/py/w/x', token=b'tok'))"),
        "{mine}"
    );
}

#[test]
fn a_restarted_xenstored_continues_from_its_state_file() {
    let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("xs-restart.state");
    let _ = std::fs::remove_file(&state);
    let args = [std::ffi::OsStr::new("--state"), state.as_os_str()];
    let mut first = start_our_xenstored_with("restart", &args);
    let s = first.socket.clone();
    assert_eq!(
        run(
            false,
            "write",
            &[
                "/keep/a",
                "1",
                "/keep/b/c",
                "x\\001y",
                "/local/domain/3/name",
                "g"
            ],
            &s
        )
        .2,
        0
    );
    assert_eq!(run(false, "chmod", &["-r", "/keep", "r0"], &s).2, 0);
    let before = run(false, "ls", &["-p", "/"], &s);
    // SIGTERM: the state is written, the daemon exits cleanly.
    assert!(Command::new("kill")
        .arg(first.child.id().to_string())
        .status()
        .unwrap()
        .success());
    assert!(first.child.wait().unwrap().success());
    assert!(state.exists());
    let restore = [
        std::ffi::OsStr::new("--state"),
        state.as_os_str(),
        std::ffi::OsStr::new("--restore"),
    ];
    let second = start_our_xenstored_with("restart", &restore);
    assert_eq!(run(false, "ls", &["-p", "/"], &second.socket), before);
    // A damaged state file is refused, not half-loaded.
    std::fs::write(&state, b"not a state file").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dom0kit"))
        .args(["xenstored", "--socket"])
        .arg(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("xs-restart-bad.sock"))
        .args(restore)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"));
}

#[test]
fn large_directories_list_and_remove_as_on_c_xenstored() {
    let peer = start_c_xenstored("big");
    let ours = start_our_xenstored("big");
    let mut args = Vec::new();
    for i in 0..3000 {
        args.push(format!("/big/child-with-a-long-name-{i:05}"));
        args.push(String::new());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for s in [&peer.socket, &ours.socket] {
        assert_eq!(run(false, "write", &args, s).2, 0);
    }
    // Over 4096 bytes of names: libxenstore reads it with DIRECTORY_PART.
    let theirs = run(false, "list", &["/big"], &peer.socket);
    assert_eq!(theirs.0.lines().count(), 3000, "{}", theirs.1);
    assert_eq!(
        run(false, "list", &["/big"], &ours.socket),
        theirs,
        "Debian's tool on ours"
    );
    assert_eq!(
        run(true, "list", &["/big"], &ours.socket),
        theirs,
        "our tool on ours"
    );
    assert_eq!(
        run(true, "list", &["/big"], &peer.socket),
        theirs,
        "our tool on C"
    );
    // xenstore-rm removes the directory inside a transaction.
    let t = std::time::Instant::now();
    assert_eq!(run(false, "rm", &["/big"], &ours.socket).2, 0);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "rm took {:?}",
        t.elapsed()
    );
    assert_eq!(run(false, "exists", &["/big"], &ours.socket).2, 1);
}
