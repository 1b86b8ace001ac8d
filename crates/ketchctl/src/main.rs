//! `ketchctl`: etcdctl v3's command line (its commands, flags, `ETCDCTL_*`
//! variables, output formats, error texts and exit codes, byte for byte as
//! etcdctl 3.4.23 prints them), on `ketch-client`, so that scripts written
//! for etcdctl run unchanged against Ketch or etcd.
//!
//! - [`cli`] parses the command line as cobra/pflag do; the flags come
//!   from etcdctl's own help texts ([`help`]).
//! - [`session`] turns the global flags and `ETCDCTL_*` into a client.
//! - [`cmd`] has one function per command; [`printer`] the output
//!   formats ([`json`], [`table`], and Go's formatting rules in [`gofmt`]).
//! - [`error`] holds etcdctl's exit codes and error texts.
//! - [`secure`] reads the TLS flags and does DNS SRV discovery.
//!
//! Not supported (each fails with a clear message and exit code 4): offline
//! snapshot and data directory tools, `make-mirror`, `migrate`, `check
//! datascale`, `completion`.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod cli;
mod clock;
mod cmd;
mod error;
mod gofmt;
mod help;
mod json;
mod password;
mod printer;
mod secure;
mod session;
mod table;

use std::io::Write;

use error::Exit;

fn main() {
    // Keys and values may be any bytes, as in etcdctl.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let code = match run(args) {
        Ok(()) => 0,
        Err(exit) => {
            error::out(&exit.stdout);
            error::err(&exit.stderr);
            exit.code
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn run(args: Vec<std::ffi::OsString>) -> Result<(), Exit> {
    let invocation = match cli::parse(args)? {
        cli::Parsed::Help(text) => {
            error::out(text);
            return Ok(());
        }
        cli::Parsed::Run(invocation) => invocation,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::error(error::EXIT_ERROR, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(cmd::run(invocation))
}
