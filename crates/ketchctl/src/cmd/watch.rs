//! `etcdctl watch`: a key, prefix or range from now or from `--rev`,
//! printed as events arrive; `-i` reads `watch ...` and `progress`
//! commands from stdin; `watch <key> -- <command> [args]` runs the
//! command for every event with `ETCD_WATCH_*` set.

use std::io::BufRead;
use std::time::Duration;

use ketch_client::proto::ResponseHeader;
use ketch_client::{Client, Error, GetOptions, WatchOptions, Watcher};
use tokio::sync::{broadcast, mpsc};

use crate::cli::{self, Flags, Invocation, Parsed};
use crate::error::{
    CtlResult, EXIT_BAD_ARGS, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_INVALID_INPUT, Exit, err, message, out,
};
use crate::gofmt;
use crate::printer::{Printer, WatchView};
use crate::session;

/// Pause before trying again to start a watch no member would serve
/// (clientv3 keeps retrying too).
const RETRY_START: Duration = Duration::from_millis(500);

const BAD_ARGS_NUM: &str = "bad number of arguments";
const BAD_ARGS_CONFLICT_ENV: &str = "bad number of arguments (found conflicting environment key)";
const BAD_ARGS_SEPARATOR: &str = "bad number of arguments (found separator --, but no commands)";

/// The key and range of the watch from the environment.
fn env_key_range() -> (String, String) {
    (
        std::env::var("ETCDCTL_WATCH_KEY").unwrap_or_default(),
        std::env::var("ETCDCTL_WATCH_RANGE_END").unwrap_or_default(),
    )
}

/// What one watch is: key, optional range end, and the flags that shape it.
struct Spec {
    args: Vec<Vec<u8>>,
    exec: Vec<String>,
    prefix: bool,
    prev_kv: bool,
    rev: i64,
    progress_notify: bool,
}

impl Spec {
    fn from_flags(args: Vec<Vec<u8>>, exec: Vec<String>, flags: &Flags) -> Spec {
        Spec {
            args,
            exec,
            prefix: flags.bool("prefix"),
            prev_kv: flags.bool("prev-kv"),
            rev: flags.int("rev"),
            progress_notify: flags.bool("progress-notify"),
        }
    }

    /// etcdctl's `getWatchChan` checks: the key and watch options.
    fn request(&self) -> Result<(Vec<u8>, WatchOptions), String> {
        let Some(key) = self.args.first() else { return Err(BAD_ARGS_NUM.to_string()) };
        let mut options = WatchOptions::new().start_revision(self.rev).require_leader();
        if let Some(end) = self.args.get(1) {
            if self.prefix {
                return Err("`range_end` and `--prefix` are mutually exclusive".to_string());
            }
            options = options.range_end(end.clone());
        }
        if self.prefix {
            options = options.prefix();
        }
        if self.prev_kv {
            options = options.prev_kv();
        }
        if self.progress_notify {
            options = options.progress_notify();
        }
        Ok((key.clone(), options))
    }
}

/// `etcdctl watch`.
pub async fn watch(mut inv: Invocation) -> CtlResult {
    let (env_key, env_range) = env_key_range();
    if env_key.is_empty() && !env_range.is_empty() {
        return Err(Exit::error(
            EXIT_BAD_ARGS,
            format!(
                "ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END={}",
                gofmt::quote(env_range.as_bytes())
            ),
        ));
    }
    if inv.flags.bool("interactive") {
        return interactive(inv, env_key, env_range).await;
    }
    let spec = parse_args(&inv, &env_key, &env_range).map_err(|e| Exit::error(EXIT_BAD_ARGS, e))?;
    let s = session::connect(&mut inv).await?;
    let (key, options) = spec.request().map_err(|e| Exit::error(EXIT_BAD_ARGS, e))?;
    let watcher = start(&s.client, &key, &options).await;
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            canceled(&s.client, &s.printer, &e).await?;
            None
        }
    };
    if let Some(watcher) = watcher {
        print_watch(&s.client, &s.printer, watcher, &spec.exec, None).await?;
    }
    Err(Exit::error(EXIT_INTERRUPTED, "watch is canceled by the server"))
}

/// etcdctl's `parseWatchArgs` for the command line: the watch's arguments
/// and the command after `--`.
fn parse_args(inv: &Invocation, env_key: &str, env_range: &str) -> Result<Spec, String> {
    // etcdctl looks at the raw command line after the word `watch`.
    let raw: Vec<&String> = match inv.raw.iter().position(|a| a == "watch") {
        Some(i) => inv.raw[i + 1..].iter().collect(),
        None => inv.raw.iter().collect(),
    };
    let exec_index = raw.iter().position(|a| *a == "--");
    if exec_index.is_some_and(|i| i == raw.len() - 1) {
        return Err(BAD_ARGS_SEPARATOR.to_string());
    }
    if exec_index.is_none() && raw.is_empty() && env_key.is_empty() {
        return Err(BAD_ARGS_NUM.to_string());
    }
    let exec: Vec<String> = inv.dash_args.clone().unwrap_or_default();
    let before_dash = inv.arg_bytes.len() - exec.len();
    let mut args: Vec<Vec<u8>> = inv.arg_bytes[..before_dash].to_vec();
    if !env_key.is_empty() {
        if !args.is_empty() {
            return Err(BAD_ARGS_CONFLICT_ENV.to_string());
        }
        args.push(env_key.as_bytes().to_vec());
        if !env_range.is_empty() {
            args.push(env_range.as_bytes().to_vec());
        }
    }
    Ok(Spec::from_flags(args, exec, &inv.flags))
}

/// Starts a watch, waiting for a member to serve it as clientv3 does.
async fn start(client: &Client, key: &[u8], options: &WatchOptions) -> ketch_client::Result<Watcher> {
    loop {
        match client.watch().watch(key.to_vec(), options.clone()).await {
            Err(Error::Unavailable { .. }) => tokio::time::sleep(RETRY_START).await,
            other => return other,
        }
    }
}

/// Prints a watch's responses until it ends (etcdctl's `printWatchCh`),
/// asking for a progress notification whenever `progress` says so.
async fn print_watch(
    client: &Client,
    printer: &Printer,
    mut watcher: Watcher,
    exec: &[String],
    mut progress: Option<broadcast::Receiver<()>>,
) -> CtlResult {
    loop {
        let next = tokio::select! {
            next = watcher.message() => next,
            asked = recv_progress(&mut progress) => {
                match asked {
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = watcher.request_progress().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => progress = None,
                }
                continue;
            }
        };
        match next {
            Ok(Some(response)) => {
                if response.events.is_empty() {
                    out(format!("progress notify: {}\n", response.header.revision));
                }
                printer.watch(&WatchView {
                    header: &response.header,
                    events: &response.events,
                    compact_revision: 0,
                    canceled: false,
                    created: false,
                })?;
                for event in &response.events {
                    run_exec(exec, response.header.revision, event).await?;
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => return canceled(client, printer, &e).await,
        }
    }
}

/// The next progress request, or never without a receiver.
async fn recv_progress(progress: &mut Option<broadcast::Receiver<()>>) -> Result<(), broadcast::error::RecvError> {
    match progress {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// A watch the server ended: etcdctl's `watch was canceled (...)` and the
/// canceled response.
async fn canceled(client: &Client, printer: &Printer, e: &Error) -> CtlResult {
    let reason = match e {
        Error::WatchCanceled { reason } if ketch_client::ErrorKind::from_message(reason).is_none() => {
            format!("rpc error: code = FailedPrecondition desc = {reason}")
        }
        other => message(other),
    };
    err(format!("watch was canceled ({reason})\n"));
    // The canceled response's header is the member's, at revision 0 (etcd
    // sends a compaction cancel at no revision); a read gives the rest.
    let compact_revision = match e {
        Error::Compacted { compact_revision } => *compact_revision,
        _ => 0,
    };
    let mut header = match printer.format {
        crate::printer::Format::Simple => ResponseHeader::default(),
        _ => client
            .kv()
            .get(vec![0], GetOptions::new().serializable().count_only())
            .await
            .ok()
            .and_then(|r| r.header)
            .unwrap_or_default(),
    };
    if compact_revision != 0 {
        header.revision = 0;
    }
    printer.watch(&WatchView { header: &header, events: &[], compact_revision, canceled: true, created: false })
}

/// Runs the command given after `--` for one event (etcdctl's exec hook).
async fn run_exec(exec: &[String], revision: i64, event: &ketch_client::Event) -> CtlResult {
    let Some((program, args)) = exec.split_first() else { return Ok(()) };
    let kv = event.kv.clone().unwrap_or_default();
    let kind = if event.r#type == 1 { "DELETE" } else { "PUT" };
    let status = tokio::process::Command::new(program)
        .args(args)
        .env("ETCD_WATCH_REVISION", revision.to_string())
        .env("ETCD_WATCH_EVENT_TYPE", gofmt::quote(kind.as_bytes()))
        .env("ETCD_WATCH_KEY", gofmt::quote(&kv.key))
        .env("ETCD_WATCH_VALUE", gofmt::quote(&kv.value))
        .status()
        .await;
    let failure = match status {
        Ok(status) if status.success() => return Ok(()),
        Ok(status) => match status.code() {
            Some(code) => format!("exit status {code}"),
            None => format!("signal: {}", status),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("exec: {}: executable file not found in $PATH", gofmt::quote(program.as_bytes()))
        }
        Err(e) => e.to_string(),
    };
    let quoted: Vec<String> = exec.iter().map(|a| gofmt::quote(a.as_bytes())).collect();
    err(format!("command [{}] error ({failure})\n", quoted.join(" ")));
    Err(Exit::silent(EXIT_ERROR))
}

/// `watch -i`: commands from stdin, each watch printed as it goes.
async fn interactive(mut inv: Invocation, env_key: String, env_range: String) -> CtlResult {
    let s = session::connect(&mut inv).await?;
    let (lines_tx, mut lines) = mpsc::channel::<std::io::Result<String>>(1);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut reader = stdin.lock();
        loop {
            let mut line = Vec::new();
            let read = match reader.read_until(b'\n', &mut line) {
                Ok(_) if line.last() == Some(&b'\n') => Ok(String::from_utf8_lossy(&line).into_owned()),
                Ok(_) => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "EOF")),
                Err(e) => Err(e),
            };
            let done = read.is_err();
            if lines_tx.blocking_send(read).is_err() || done {
                return;
            }
        }
    });
    let (progress_tx, _) = broadcast::channel::<()>(16);
    let (fatal_tx, mut fatal) = mpsc::channel::<Exit>(1);
    loop {
        let line = tokio::select! {
            line = lines.recv() => line,
            exit = fatal.recv() => return Err(exit.unwrap_or_else(|| Exit::silent(EXIT_ERROR))),
        };
        let line = match line {
            Some(Ok(line)) => line,
            Some(Err(e)) => {
                return Err(Exit::error(EXIT_INVALID_INPUT, format!("Error reading watch request line: {e}")));
            }
            None => return Err(Exit::error(EXIT_INVALID_INPUT, "Error reading watch request line: EOF")),
        };
        let line = line.strip_suffix('\n').unwrap_or(&line).to_string();
        let args = match super::txn::argify(&line) {
            Ok(args) => args,
            Err(e) => return Err(e),
        };
        let Some(command) = args.first() else {
            err(format!("Invalid command: {line} (watch and progress supported)\n"));
            continue;
        };
        match command.as_str() {
            "watch" => {
                if args.len() < 2 && env_key.is_empty() {
                    err(format!("Invalid command {line} (command type or key is not provided)\n"));
                    continue;
                }
                let spec = interactive_spec(&args, &env_key, &env_range).map_err(|e| Exit::error(EXIT_BAD_ARGS, e))?;
                let (key, options) = match spec.request() {
                    Ok(request) => request,
                    Err(e) => {
                        err(format!("Invalid command {line} ({e})\n"));
                        continue;
                    }
                };
                let watcher = match start(&s.client, &key, &options).await {
                    Ok(w) => w,
                    Err(e) => {
                        canceled(&s.client, &s.printer, &e).await?;
                        continue;
                    }
                };
                let (client, printer, fatal_tx) = (s.client.clone(), s.printer.clone(), fatal_tx.clone());
                let progress = progress_tx.subscribe();
                tokio::spawn(async move {
                    let result = print_watch(&client, &printer, watcher, &spec.exec, Some(progress)).await;
                    if let Err(exit) = result {
                        let _ = fatal_tx.send(exit).await;
                    }
                });
            }
            "progress" => {
                let _ = progress_tx.send(());
            }
            _ => err(format!("Invalid command {line} (only support watch)\n")),
        }
    }
}

/// An interactive `watch ...` line: its flags and arguments.
fn interactive_spec(args: &[String], env_key: &str, env_range: &str) -> Result<Spec, String> {
    let rest = &args[1..];
    if rest.last().is_some_and(|a| a == "--") {
        return Err(BAD_ARGS_SEPARATOR.to_string());
    }
    let exec_exists = rest.iter().any(|a| a == "--");
    let parsed = cli::parse_local(args.to_vec()).map_err(|(_, message)| message)?;
    let Parsed::Run(inv) = parsed else { return Err(BAD_ARGS_NUM.to_string()) };
    let exec = inv.dash_args.clone().unwrap_or_default();
    let mut positional: Vec<Vec<u8>> = inv.arg_bytes[..inv.arg_bytes.len() - exec.len()].to_vec();
    if !exec_exists && env_key.is_empty() && positional.is_empty() {
        return Err(BAD_ARGS_NUM.to_string());
    }
    if !exec_exists && !positional.is_empty() && !env_key.is_empty() {
        return Err(BAD_ARGS_CONFLICT_ENV.to_string());
    }
    if !env_key.is_empty() {
        let mut ranges = vec![env_key.as_bytes().to_vec()];
        if !env_range.is_empty() {
            ranges.push(env_range.as_bytes().to_vec());
        }
        ranges.extend(positional);
        positional = ranges;
    }
    Ok(Spec::from_flags(positional, exec, &inv.flags))
}
