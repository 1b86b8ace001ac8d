//! `get`, `put`, `del` and `compaction`, with etcdctl's argument checks in
//! etcdctl's order (arguments first, then the client, then the request).

use std::io::Read;

use ketch_client::{DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget};

use crate::cli::{Flags, Invocation};
use crate::error::{CtlResult, EXIT_BAD_ARGS, EXIT_BAD_FEATURE, EXIT_ERROR, Exit, message};
use crate::gofmt;
use crate::printer::Format;
use crate::session;

/// A get as etcdctl's `getGetOp` builds it from arguments and flags.
pub fn get_op(args: &[Vec<u8>], flags: &Flags) -> Result<(Vec<u8>, GetOptions), Exit> {
    let Some(first) = args.first() else {
        return Err(Exit::error(
            EXIT_BAD_ARGS,
            "get command needs one argument as key and an optional argument as range_end",
        ));
    };
    let (prefix, from_key) = (flags.bool("prefix"), flags.bool("from-key"));
    if prefix && from_key {
        return Err(Exit::error(
            EXIT_BAD_ARGS,
            "`--prefix` and `--from-key` cannot be set at the same time, choose one",
        ));
    }
    let mut options = GetOptions::new();
    match flags.string("consistency").as_str() {
        "s" => options = options.serializable(),
        "l" => {}
        other => {
            return Err(Exit::error(
                EXIT_BAD_FEATURE,
                format!("unknown consistency flag {}", gofmt::quote(other.as_bytes())),
            ));
        }
    }
    if let Some(end) = args.get(1) {
        if prefix || from_key {
            return Err(Exit::error(
                EXIT_BAD_ARGS,
                "too many arguments, only accept one argument when `--prefix` or `--from-key` is set",
            ));
        }
        options = options.range_end(end.clone());
    }
    options = options.limit(flags.int("limit"));
    if flags.int("rev") > 0 {
        options = options.revision(flags.int("rev"));
    }
    let order = match flags.string("order").to_uppercase().as_str() {
        "ASCEND" => SortOrder::Ascend,
        "DESCEND" => SortOrder::Descend,
        "" => SortOrder::None,
        _ => return Err(Exit::error(EXIT_BAD_FEATURE, format!("bad sort order {}", flags.string("order")))),
    };
    let target = match flags.string("sort-by").to_uppercase().as_str() {
        "CREATE" => SortTarget::Create,
        "KEY" | "" => SortTarget::Key,
        "MODIFY" => SortTarget::Mod,
        "VALUE" => SortTarget::Value,
        "VERSION" => SortTarget::Version,
        _ => return Err(Exit::error(EXIT_BAD_FEATURE, format!("bad sort target {}", flags.string("sort-by")))),
    };
    // clientv3's WithSort: the server's own order is ascending by key.
    let order = if target == SortTarget::Key && order == SortOrder::Ascend { SortOrder::None } else { order };
    options = options.sort(target, order);
    if prefix {
        options = options.prefix();
    }
    if from_key {
        options = options.from_key();
    }
    if flags.bool("keys-only") {
        options = options.keys_only();
    }
    Ok((first.clone(), options))
}

/// `etcdctl get`.
pub async fn get(mut inv: Invocation) -> CtlResult {
    let (key, options) = get_op(&inv.arg_bytes, &inv.flags)?;
    let s = session::connect(&mut inv).await?;
    let response = s.logged(s.client.kv().get(key, options).await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    let mut printer = s.printer.clone();
    if inv.flags.bool("print-value-only") {
        if printer.format != Format::Simple {
            return Err(Exit::error(EXIT_BAD_ARGS, "print-value-only is only for `--write-out=simple`"));
        }
        printer.value_only = true;
    }
    printer.get(&response)
}

/// etcdctl's `argOrStdin`: argument `i`, or all of stdin if it is absent.
fn arg_or_stdin(args: &[Vec<u8>], i: usize, stdin: &mut dyn Read) -> Option<Vec<u8>> {
    if let Some(arg) = args.get(i) {
        return Some(arg.clone());
    }
    let mut bytes = Vec::new();
    match stdin.read_to_end(&mut bytes) {
        Ok(_) if !bytes.is_empty() => Some(bytes),
        _ => None,
    }
}

/// A put as etcdctl's `getPutOp` builds it (`stdin` gives a missing value).
pub fn put_op(args: &[Vec<u8>], flags: &Flags, stdin: &mut dyn Read) -> Result<(Vec<u8>, Vec<u8>, PutOptions), Exit> {
    let needs = || Exit::error(EXIT_BAD_ARGS, "put command needs 1 argument and input from stdin or 2 arguments");
    let Some(key) = args.first() else { return Err(needs()) };
    let ignore_value = flags.bool("ignore-value");
    if ignore_value && args.len() > 1 {
        return Err(Exit::error(EXIT_BAD_ARGS, "put command needs only 1 argument when 'ignore-value' is set"));
    }
    let mut value = Vec::new();
    if !ignore_value {
        value = arg_or_stdin(args, 1, stdin).ok_or_else(needs)?;
    }
    let lease = gofmt::parse_int(&flags.string("lease"), 16)
        .map_err(|e| Exit::error(EXIT_BAD_ARGS, format!("bad lease ID ({e}), expecting ID in Hex")))?;
    let mut options = PutOptions::new();
    if lease != 0 {
        options = options.lease(lease);
    }
    if flags.bool("prev-kv") {
        options = options.prev_kv();
    }
    if ignore_value {
        options = options.ignore_value();
    }
    if flags.bool("ignore-lease") {
        options = options.ignore_lease();
    }
    Ok((key.clone(), value, options))
}

/// `etcdctl put`.
pub async fn put(mut inv: Invocation) -> CtlResult {
    let (key, value, options) = put_op(&inv.arg_bytes, &inv.flags, &mut std::io::stdin())?;
    let s = session::connect(&mut inv).await?;
    let response =
        s.logged(s.client.kv().put(key, value, options).await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.put(&response)
}

/// A delete as etcdctl's `getDelOp` builds it.
pub fn del_op(args: &[Vec<u8>], flags: &Flags) -> Result<(Vec<u8>, DeleteOptions), Exit> {
    if args.is_empty() || args.len() > 2 {
        return Err(Exit::error(
            EXIT_BAD_ARGS,
            "del command needs one argument as key and an optional argument as range_end",
        ));
    }
    let (prefix, from_key) = (flags.bool("prefix"), flags.bool("from-key"));
    if prefix && from_key {
        return Err(Exit::error(
            EXIT_BAD_ARGS,
            "`--prefix` and `--from-key` cannot be set at the same time, choose one",
        ));
    }
    let mut options = DeleteOptions::new();
    if let Some(end) = args.get(1) {
        if prefix || from_key {
            return Err(Exit::error(
                EXIT_BAD_ARGS,
                "too many arguments, only accept one argument when `--prefix` or `--from-key` is set",
            ));
        }
        options = options.range_end(end.clone());
    }
    if prefix {
        options = options.prefix();
    }
    if flags.bool("prev-kv") {
        options = options.prev_kv();
    }
    if from_key {
        options = options.from_key();
    }
    Ok((args[0].clone(), options))
}

/// `etcdctl del`.
pub async fn del(mut inv: Invocation) -> CtlResult {
    let (key, options) = del_op(&inv.arg_bytes, &inv.flags)?;
    let s = session::connect(&mut inv).await?;
    let response =
        s.logged(s.client.kv().delete(key, options).await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.del(&response)
}

/// `etcdctl compaction`.
pub async fn compaction(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(Exit::error(EXIT_BAD_ARGS, "compaction command needs 1 argument"));
    }
    let revision = gofmt::parse_int(&inv.args[0], 10).map_err(|e| Exit::error(EXIT_ERROR, e))?;
    let physical = inv.flags.bool("physical");
    let s = session::connect(&mut inv).await?;
    s.logged(s.client.kv().compact(revision, physical).await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    crate::error::out(format!("compacted revision {revision}\n"));
    Ok(())
}
