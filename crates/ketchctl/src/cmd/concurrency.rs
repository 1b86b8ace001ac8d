//! `lock` and `elect`: etcd's concurrency recipes held until SIGINT or
//! SIGTERM (then released cleanly), or around a command.

use ketch_client::GetOptions;
use ketch_client::concurrency::{DEFAULT_SESSION_TTL, Election, Mutex, Session, SessionOptions};
use ketch_client::proto::RangeResponse;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::Invocation;
use crate::error::{CtlResult, EXIT_BAD_ARGS, EXIT_ERROR, Exit, message};
use crate::session;

/// Resolves at the first SIGINT or SIGTERM.
async fn interrupted() {
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

fn failed(e: &ketch_client::Error) -> Exit {
    Exit::error(EXIT_ERROR, message(e))
}

fn canceled() -> Exit {
    Exit::error(EXIT_ERROR, "context canceled")
}

/// `lock <name> [command args...]`.
pub async fn lock(mut inv: Invocation) -> CtlResult {
    let Some(name) = inv.args.first().cloned() else {
        return Err(Exit::error(EXIT_BAD_ARGS, "lock takes a lock name argument and an optional command to execute"));
    };
    let command: Vec<String> = inv.args[1..].to_vec();
    let ttl = inv.flags.int("ttl");
    let s = session::connect(&mut inv).await?;
    let interrupt = interrupted();
    tokio::pin!(interrupt);
    let session = Session::new(&s.client, SessionOptions::new().ttl(ttl)).await.map_err(|e| failed(&e))?;
    let mut mutex = Mutex::new(&session, name);
    tokio::select! {
        locked = mutex.lock() => locked.map_err(|e| failed(&e))?,
        _ = &mut interrupt => return Err(canceled()),
    }
    if let Some((program, args)) = command.split_first() {
        let revision = mutex.header().map_or(0, |h| h.revision);
        let status = tokio::process::Command::new(program)
            .args(args)
            .env("ETCD_LOCK_KEY", String::from_utf8_lossy(mutex.key()).into_owned())
            .env("ETCD_LOCK_REV", revision.to_string())
            .status()
            .await;
        let unlocked = mutex.unlock().await;
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => {
                let text = status.code().map_or_else(|| status.to_string(), |c| format!("exit status {c}"));
                return Err(Exit::error(EXIT_ERROR, text));
            }
            Err(e) => return Err(Exit::error(EXIT_ERROR, e)),
        }
        return unlocked.map_err(|e| failed(&e));
    }
    let held = s.client.kv().get(mutex.key().to_vec(), GetOptions::new()).await.map_err(|e| failed(&e))?;
    if held.kvs.is_empty() {
        return Err(Exit::error(EXIT_ERROR, "lock lost on init"));
    }
    s.printer.get(&held)?;
    tokio::select! {
        _ = &mut interrupt => mutex.unlock().await.map_err(|e| failed(&e)),
        _ = session.done() => Err(Exit::error(EXIT_ERROR, "session expired")),
    }
}

/// `elect <name> <proposal>` campaigns; `elect -l <name>` observes.
pub async fn elect(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 && inv.args.len() != 2 {
        return Err(Exit::error(
            EXIT_BAD_ARGS,
            "elect takes one election name argument and an optional proposal argument",
        ));
    }
    let listen = inv.flags.bool("listen");
    if inv.args.len() == 1 && !listen {
        return Err(Exit::error(EXIT_BAD_ARGS, "no proposal argument but -l not set"));
    }
    if inv.args.len() == 2 && listen {
        return Err(Exit::error(EXIT_BAD_ARGS, "proposal given but -l is set"));
    }
    let s = session::connect(&mut inv).await?;
    let interrupt = interrupted();
    tokio::pin!(interrupt);
    let session =
        Session::new(&s.client, SessionOptions::new().ttl(DEFAULT_SESSION_TTL)).await.map_err(|e| failed(&e))?;
    let mut election = Election::new(&session, inv.args[0].clone());
    if listen {
        let mut observer = election.observe();
        loop {
            tokio::select! {
                next = observer.next() => match next {
                    Ok(Some(kv)) => s.printer.get(&RangeResponse { kvs: vec![kv], count: 1, ..Default::default() })?,
                    _ => return Err(Exit::error(EXIT_ERROR, "elect: observer lost")),
                },
                _ = &mut interrupt => return Ok(()),
            }
        }
    }
    tokio::select! {
        won = election.campaign(inv.args[1].clone()) => won.map_err(|e| failed(&e))?,
        _ = &mut interrupt => return Err(canceled()),
    }
    let key = election.key().map(<[u8]>::to_vec).unwrap_or_default();
    let mine = s.client.kv().get(key, GetOptions::new()).await.map_err(|e| failed(&e))?;
    s.printer.get(&mine)?;
    tokio::select! {
        _ = &mut interrupt => election.resign().await.map_err(|e| failed(&e)),
        _ = session.done() => Err(Exit::error(EXIT_ERROR, "elect: session expired")),
    }
}
