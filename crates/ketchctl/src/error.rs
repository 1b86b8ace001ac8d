//! How ketchctl ends: etcdctl's exit codes, its `Error: ...` lines, and the
//! texts it prints for client errors (including the client library's
//! warning log line for a failed request).

use std::fmt::Display;
use std::io::Write;

use ketch_client::{Code, Error, ErrorKind};

use crate::gofmt::json_string_plain;

/// etcdctl's exit codes (`pkg/cobrautl`).
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_BAD_CONNECTION: i32 = 2;
pub const EXIT_INVALID_INPUT: i32 = 3;
pub const EXIT_BAD_FEATURE: i32 = 4;
pub const EXIT_INTERRUPTED: i32 = 5;
pub const EXIT_BAD_ARGS: i32 = 128;

/// A reason to stop: the exit code, and what is still to be printed on
/// stdout (a usage text) and stderr.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Exit {
    /// etcdctl's `ExitWithError(code, err)`: `Error: <err>`.
    pub fn error(code: i32, message: impl Display) -> Exit {
        Exit { code, stdout: String::new(), stderr: format!("Error: {message}\n") }
    }

    /// Exit with `code`, everything already printed.
    pub fn silent(code: i32) -> Exit {
        Exit { code, stdout: String::new(), stderr: String::new() }
    }

    /// A feature ketchctl does not have (yet): a clear message and
    /// etcdctl's "bad feature" exit code.
    pub fn unsupported(what: impl Display) -> Exit {
        Exit::error(EXIT_BAD_FEATURE, format!("ketchctl: {what} is not supported yet"))
    }

    /// Go's nil pointer dereference panic (etcdctl's fields printer on a
    /// response without a header), as far as it is reproducible.
    pub fn nil_pointer_panic() -> Exit {
        Exit {
            code: 2,
            stdout: String::new(),
            stderr: "panic: runtime error: invalid memory address or nil pointer dereference\n".to_string(),
        }
    }
}

pub type CtlResult<T = ()> = Result<T, Exit>;

/// Writes to stdout, ignoring a closed pipe as etcdctl does not care either.
pub fn out(bytes: impl AsRef<[u8]>) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(bytes.as_ref());
    let _ = stdout.flush();
}

/// Writes to stderr.
pub fn err(bytes: impl AsRef<[u8]>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(bytes.as_ref());
}

/// Go's text of an OS error (`open x: no such file or directory`).
pub fn go_io_error(op: &str, path: &str, e: &std::io::Error) -> String {
    let text = match e.raw_os_error() {
        // SAFETY: `strerror` returns a pointer to a static NUL-terminated string.
        Some(code) => unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) }.to_string_lossy().into_owned(),
        None => e.to_string(),
    };
    let mut chars = text.chars();
    let text = match chars.next() {
        Some(first) => first.to_lowercase().collect::<String>() + chars.as_str(),
        None => text,
    };
    format!("{op} {path}: {text}")
}

/// gRPC's name of a status code, as Go prints it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// What etcdctl prints for a client error (Go's `err.Error()` after
/// clientv3's `toErr`): etcd's own message for the errors it knows, `rpc
/// error: code = ... desc = ...` for any other server answer, and `context
/// deadline exceeded` when no member answered in time.
pub fn message(e: &Error) -> String {
    match e {
        Error::Server(etcd) => {
            if etcd.kind().is_some() {
                return etcd.message().to_string();
            }
            match etcd.code() {
                Code::DeadlineExceeded | Code::Cancelled => "context deadline exceeded".to_string(),
                code => format!("rpc error: code = {} desc = {}", code_name(code), etcd.message()),
            }
        }
        Error::Unavailable { .. } | Error::OutcomeUnknown { .. } => "context deadline exceeded".to_string(),
        Error::LeaseExpired { .. } => ErrorKind::LeaseNotFound.message().to_string(),
        Error::Compacted { .. } => ErrorKind::Compacted.message().to_string(),
        Error::WatchCanceled { reason } => reason.clone(),
        other => other.to_string(),
    }
}

/// The error text clientv3's retry interceptor logs for a failed attempt on
/// one endpoint dialed directly (`passthrough:///<endpoint>`): there the
/// dial error shows.
fn attempt_error_on(endpoint: &str, e: &Error) -> Option<String> {
    let balancer =
        |error: &str| Some(format!("rpc error: code = DeadlineExceeded desc = latest balancer error: {error}"));
    let handshake = |error: &str| {
        balancer(&format!("connection error: desc = \"transport: authentication handshake failed: {error}\""))
    };
    match e {
        Error::Unavailable { last, .. } if last.contains("refused") => balancer(&format!(
            "connection error: desc = \"transport: Error while dialing dial tcp {}: connect: connection refused\"",
            crate::secure::host_port(endpoint)
        )),
        // The client library's texts for a failed TLS handshake (rustls's).
        Error::Unavailable { last, .. } if last.contains("TLS handshake failed") => {
            if last.contains("UnknownIssuer") {
                handshake("x509: certificate signed by unknown authority")
            } else if last.contains("handshake eof") {
                handshake("EOF")
            } else if last.contains("fatal alert") {
                // The server refused our certificate (or its absence) and closed.
                balancer("connection closed")
            } else {
                attempt_error(e)
            }
        }
        _ => attempt_error(e),
    }
}

/// The gRPC status text of a failed request (`rpc error: code = ... desc = ...`).
pub fn status_text(e: &Error) -> Option<String> {
    attempt_error(e)
}

/// The error text clientv3's retry interceptor logs for a failed attempt.
fn attempt_error(e: &Error) -> Option<String> {
    match e {
        Error::Server(etcd) => Some(format!("rpc error: code = {} desc = {}", code_name(etcd.code()), etcd.message())),
        Error::Unavailable { .. } | Error::OutcomeUnknown { .. } => Some(
            "rpc error: code = DeadlineExceeded desc = latest balancer error: all SubConns are in TransientFailure"
                .to_string(),
        ),
        _ => None,
    }
}

/// Logs clientv3's warning for a failed unary request, as etcdctl prints it
/// on stderr before the error itself:
/// `{"level":"warn","ts":...,"caller":"clientv3/retry_interceptor.go:62",...}`.
pub fn log_failed_request(target: &str, e: &Error) {
    let error = match target.strip_prefix("passthrough:///") {
        Some(endpoint) => attempt_error_on(endpoint, e),
        None => attempt_error(e),
    };
    let Some(error) = error else { return };
    let line = format!(
        "{{\"level\":\"warn\",\"ts\":{},\"caller\":\"clientv3/retry_interceptor.go:62\",\"msg\":\"retrying of unary invoker failed\",\"target\":{},\"attempt\":0,\"error\":{}}}\n",
        json_string_plain(&crate::clock::iso8601_utc_millis()),
        json_string_plain(target),
        json_string_plain(&error),
    );
    err(line);
}
