//! Running a command-line client (etcdctl, ketchctl) to the end, with its
//! output captured, so two clients' answers can be compared.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a command printed and how it exited (-1: killed or by a signal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtlOutput {
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub code: i32,
}

impl CtlOutput {
    /// Standard output as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// `program args` with `ETCDCTL_API=3` and none of the caller's other
/// `ETCDCTL_*` variables, every stream piped.
pub fn bare_ctl_command(program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ETCDCTL_API", "3").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` with `env` added, feeds it `stdin` (when its stdin is piped),
/// and kills it after `timeout`. Its stdout and stderr must be piped.
pub fn run_to_end(mut cmd: Command, stdin: Option<&str>, env: &[(&str, &str)], timeout: Duration) -> CtlOutput {
    let program = cmd.get_program().to_owned();
    for (k, v) in env {
        cmd.env(k, v);
    }
    crate::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let writer = child.stdin.take().map(|mut child_stdin| {
        let input = stdin.unwrap_or("").to_string();
        std::thread::spawn(move || {
            let _ = child_stdin.write_all(input.as_bytes());
        })
    });
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot poll the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("cannot reap the child");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    CtlOutput {
        stdout: out_reader.join().expect("stdout reader panicked"),
        stderr: err_reader.join().expect("stderr reader panicked"),
        code: status.code().unwrap_or(-1),
    }
}
