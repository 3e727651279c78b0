//! The README, run as a newcomer runs it: every fenced `sh` block, in order, verbatim,
//! against `reactor dev` started exactly as the README says (no flags: the default port
//! 8080, the default per-user state directory), from a fresh home directory.
//!
//! A block may carry one annotation in the HTML comment just above it:
//! - `skip (why)`: not run here (the set-up and the test command, which CI runs itself;
//!   system packages);
//! - `background`: a server; started, awaited until it prints its `export` line (which
//!   later blocks then `eval`, as the README tells a reader to), and stopped at the end;
//! - `runs until stopped`: a command that runs until Ctrl-C; it must still be running
//!   after a few seconds (or print what `expect` names), then it is stopped;
//! - `expect "text"`: what its output must contain;
//! - `stdin "text"`: what is typed at its prompt.
//!
//! Blocks run one after the other with `bash -euo pipefail`, each with the `export`
//! lines of the blocks before it, in a temporary directory that holds the repository's
//! `examples/`. A block without annotation must simply succeed.

use reactor_tests::{root, service_bin};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One fenced `sh` block and its annotation.
#[derive(Debug)]
struct Block {
    line: usize,
    code: String,
    skip: bool,
    background: bool,
    until_stopped: bool,
    expect: Option<String>,
    stdin: Option<String>,
}

/// The fenced `sh` blocks of `text`, with the annotation of the comment above each.
fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut note: Option<String> = None;
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("<!-- readme-test:") {
            note = Some(rest.trim_end_matches("-->").trim().to_string());
            continue;
        }
        if trimmed == "```sh" {
            let mut code = String::new();
            for (_, l) in lines.by_ref() {
                if l.trim() == "```" {
                    break;
                }
                code.push_str(l);
                code.push('\n');
            }
            let note = note.take().unwrap_or_default();
            let quoted = |key: &str| {
                let start = note.find(&format!("{key} \""))? + key.len() + 2;
                let rest = &note[start..];
                // The closing quote is the last one: the text may hold escaped quotes.
                let end = rest.rfind('"')?;
                Some(rest[..end].replace("\\\"", "\""))
            };
            out.push(Block {
                line: n + 1,
                code,
                skip: note.starts_with("skip"),
                background: note.starts_with("background"),
                until_stopped: note.starts_with("runs until stopped"),
                expect: quoted("expect"),
                stdin: quoted("stdin"),
            });
            continue;
        }
        if !trimmed.is_empty() {
            note = None;
        }
    }
    out
}

/// A process started from a block, stopped (its whole process group) on drop.
struct Running {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Running {
    fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits until the output contains `text`, or the process ends, or `timeout`.
    fn wait_for(&mut self, text: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(text) {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                std::thread::sleep(Duration::from_millis(200));
                return self.output().contains(text);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// The environment of a newcomer's shell: a fresh home, `reactor` on `PATH`, nothing of
/// Reactor's set; Rust's own directories kept so that the examples' builds find the
/// toolchain and the crates already downloaded.
fn shell(cwd: &Path, home: &Path, script: &str) -> Command {
    let bin_dir = service_bin("reactor")
        .parent()
        .expect("the binaries' directory")
        .to_path_buf();
    let real_home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin_dir];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(cwd)
        .env("HOME", home)
        .env("PATH", std::env::join_paths(paths).expect("PATH"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("REACTOR_") || key.starts_with("XDG_") || key == "CARGO_TARGET_DIR" {
            cmd.env_remove(key.as_ref());
        }
    }
    for (var, dir) in [("CARGO_HOME", ".cargo"), ("RUSTUP_HOME", ".rustup")] {
        if std::env::var_os(var).is_none()
            && let Some(h) = &real_home
        {
            cmd.env(var, h.join(dir));
        }
    }
    cmd.process_group(0);
    cmd
}

use std::os::unix::process::CommandExt;

/// Starts `cmd` with its stdout and stderr collected together.
fn start(mut cmd: Command, stdin: Option<&str>) -> Running {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting bash");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let output = Arc::new(Mutex::new(String::new()));
    let pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().expect("stdout")),
        Box::new(child.stderr.take().expect("stderr")),
    ];
    for pipe in pipes {
        let output = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(mut o) = output.lock() {
                    o.push_str(&line);
                    o.push('\n');
                }
            }
        });
    }
    Running { child, output }
}

#[test]
fn the_readme_runs_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let blocks = blocks(&readme);
    assert!(
        blocks.iter().filter(|b| !b.skip).count() >= 8,
        "the README's blocks were not found: {blocks:?}"
    );
    if let Err(e) = std::net::TcpListener::bind("127.0.0.1:8080") {
        panic!(
            "the README's `reactor dev` listens on 127.0.0.1:8080, which is taken here ({e}): stop what uses it"
        );
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (home, cwd) = (tmp.path().join("home"), tmp.path().join("repo"));
    std::fs::create_dir_all(&home).expect("home");
    std::fs::create_dir_all(&cwd).expect("cwd");
    std::os::unix::fs::symlink(root().join("examples"), cwd.join("examples")).expect("examples");

    let mut exports = String::new();
    let mut server: Option<Running> = None;
    let mut transcript = String::new();
    for block in &blocks {
        transcript.push_str(&format!("\n$ # README.md:{}\n{}", block.line, block.code));
        if block.skip {
            transcript.push_str("(skipped)\n");
            continue;
        }
        let script = format!("{exports}{}", block.code);
        if block.background {
            drop(server.take());
            let mut running = start(shell(&cwd, &home, &script), None);
            let started = running.wait_for("export REACTOR_URL=", Duration::from_secs(60));
            let out = running.output();
            transcript.push_str(&out);
            assert!(
                started,
                "README.md:{}: the server did not start{transcript}",
                block.line
            );
            let line = out
                .lines()
                .find(|l| l.starts_with("export REACTOR_URL="))
                .expect("the export line");
            assert!(
                line.contains("REACTOR_URL=http://127.0.0.1:8080 "),
                "the default port: {line}"
            );
            assert!(
                out.contains(&format!(
                    "State: {}",
                    home.join(".local/share/reactor/functions").display()
                )),
                "the default per-user state directory, printed:{transcript}"
            );
            // `eval` of the line it printed, as the README says.
            exports = block
                .code
                .lines()
                .filter(|l| l.starts_with("export "))
                .chain([line])
                .map(|l| format!("{l}\n"))
                .collect();
            server = Some(running);
            continue;
        }
        for l in block.code.lines().filter(|l| l.starts_with("export ")) {
            exports.push_str(l);
            exports.push('\n');
        }
        let mut running = start(shell(&cwd, &home, &script), block.stdin.as_deref());
        if block.until_stopped {
            let ok = match &block.expect {
                Some(text) => running.wait_for(text, Duration::from_secs(300)),
                None => {
                    std::thread::sleep(Duration::from_secs(3));
                    running.child.try_wait().ok().flatten().is_none()
                }
            };
            transcript.push_str(&running.output());
            assert!(
                ok,
                "README.md:{}: did not keep running as expected{transcript}",
                block.line
            );
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        let status = loop {
            if let Some(status) = running.child.try_wait().expect("waiting for bash") {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Let the reader threads take the last lines.
        std::thread::sleep(Duration::from_millis(200));
        let out = running.output();
        transcript.push_str(&out);
        assert!(
            status.is_some_and(|s| s.success()),
            "README.md:{}: the block failed ({status:?}){transcript}",
            block.line
        );
        if let Some(text) = &block.expect {
            assert!(
                out.contains(text.as_str()),
                "README.md:{}: expected {text:?} in the output{transcript}",
                block.line
            );
        }
    }
    drop(server);
    println!("{transcript}");
}

#[test]
fn annotations_are_read() {
    let text = "<!-- readme-test: expect \"data: {\\\"chunk\\\":9}\" -->\n```sh\ncurl x\n```\n\ntext\n```sh\nls\n```\n<!-- readme-test: skip (why) -->\n```sh\nrm -rf /\n```\n";
    let b = blocks(text);
    assert_eq!(b.len(), 3);
    assert_eq!(b[0].expect.as_deref(), Some("data: {\"chunk\":9}"));
    assert_eq!(b[0].code, "curl x\n");
    assert!(!b[1].skip && b[1].expect.is_none());
    assert!(b[2].skip);
}
