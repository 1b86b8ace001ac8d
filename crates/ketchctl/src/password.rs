//! Reading passwords as etcdctl does: the `speakeasy` prompt (echo turned
//! off with `/bin/stty` on the inherited terminal, one line read from
//! stdin) and, with `--interactive=false`, Go's `fmt.Scanf("%s")`.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::error::out;

/// speakeasy's `stty`, run with etcdctl's stdin, stdout and stderr (on a
/// pipe it prints its own complaint on stderr, as under etcdctl).
const STTY: &str = "/bin/stty";

/// One byte of stdin, `None` at its end (or on an error).
fn read_byte(stdin: &mut impl Read) -> Option<u8> {
    let mut b = [0u8; 1];
    loop {
        match stdin.read(&mut b) {
            Ok(0) => return None,
            Ok(_) => return Some(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

fn stty(arg: &str) -> std::io::Result<()> {
    Command::new(STTY).arg0("stty").arg(arg).status().map(|_| ())
}

/// speakeasy's `Ask`: `prompt` on stdout, echo off, one line from stdin
/// (whitespace trimmed), echo on, a newline on stdout.
pub fn ask(prompt: &str) -> std::io::Result<String> {
    out(prompt);
    let read = (|| {
        stty("-echo")?;
        let mut line = Vec::new();
        let mut stdin = std::io::stdin().lock();
        while let Some(b) = read_byte(&mut stdin) {
            if b == b'\n' {
                break;
            }
            line.push(b);
        }
        let _ = stty("echo");
        Ok(String::from_utf8_lossy(&line).trim().to_string())
    })();
    out("\n");
    let _ = std::io::stdout().flush();
    read
}

/// Go's `fmt.Scanf("%s", &s)` on stdin: leading blanks skipped, then one
/// word; nothing on a newline or at the end of the input.
pub fn scan_word() -> String {
    scan_word_from(&mut std::io::stdin().lock())
}

fn scan_word_from(input: &mut impl Read) -> String {
    let mut word = Vec::new();
    let mut started = false;
    while let Some(b) = read_byte(input) {
        let blank = matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c);
        if b == b'\n' {
            break;
        }
        if blank {
            if started {
                break;
            }
            continue;
        }
        started = true;
        word.push(b);
    }
    String::from_utf8_lossy(&word).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanf_reads_one_word() {
        let scan = |s: &str| scan_word_from(&mut s.as_bytes());
        assert_eq!(scan("pw\n"), "pw");
        assert_eq!(scan("  a b"), "a");
        assert_eq!(scan("\tx\ty"), "x");
        assert_eq!(scan(""), "");
        assert_eq!(scan("\nlater"), "");
    }
}
