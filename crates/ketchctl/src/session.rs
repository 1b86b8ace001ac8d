//! From global flags to a connected client, as etcdctl's
//! `mustClientFromCmd` does it: `ETCDCTL_*` variables fill the global flags
//! not given on the command line (with pkg/flags' warnings), the printer is
//! chosen, `--debug` lists the settings, and the client is made.

use std::time::Duration;

use ketch_client::{Client, ClientOptions};

use crate::cli::{Flags, Invocation};
use crate::error::{EXIT_BAD_CONNECTION, EXIT_BAD_FEATURE, EXIT_ERROR, Exit, err};
use crate::printer::{Format, Printer};

/// The environment variable prefix of etcdctl's flags.
const ENV_PREFIX: &str = "ETCDCTL";

/// gRPC refuses keep-alive pings more often than this (and etcd closes
/// connections that ping more often than every 5 s); etcdctl's gRPC raises
/// its 2 s default to it.
const KEEPALIVE_TIME_MIN: Duration = Duration::from_secs(10);

/// `ETCDCTL_DIAL_TIMEOUT` for `--dial-timeout` (pkg/flags' `FlagToEnv`).
pub fn flag_env_name(flag: &str) -> String {
    format!("{ENV_PREFIX}_{}", flag.to_uppercase().replace('-', "_"))
}

/// Variables that are not flags but read by etcdctl itself.
fn is_known_variable(name: &str, path: &str) -> bool {
    // etcdctl's main unsets ETCDCTL_API; `watch` reads its key and range
    // from the environment.
    name == "ETCDCTL_API" || (path == "watch" && matches!(name, "ETCDCTL_WATCH_KEY" | "ETCDCTL_WATCH_RANGE_END"))
}

/// pkg/flags' `SetPflagsFromEnv` over the inherited flags: each flag not
/// set on the command line takes its variable's value; a variable for a
/// flag that was set is fatal; an unknown `ETCDCTL_*` variable is warned
/// about.
pub fn apply_env(path: &str, flags: &mut Flags) -> Result<(), Exit> {
    let inherited: Vec<(String, String, bool)> =
        flags.inherited().map(|f| (f.spec.name.to_string(), flag_env_name(f.spec.name), f.changed)).collect();
    let mut used = Vec::new();
    for (name, env, changed) in &inherited {
        if *changed {
            continue;
        }
        if let Ok(value) = std::env::var(env)
            && !value.is_empty()
        {
            used.push(env.clone());
            // pkg/flags returns the error, and etcdctl ignores it.
            let _ = flags.set(name, &value);
        }
    }
    for (key, value) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if used.contains(&key) || is_known_variable(&key, path) {
            continue;
        }
        if inherited.iter().any(|(_, env, changed)| *changed && *env == key) {
            err(format!(
                "{} C | pkg/flags: conflicting environment variable {} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)\n",
                crate::clock::capnslog(),
                crate::gofmt::quote(key.as_bytes())
            ));
            return Err(Exit::silent(EXIT_ERROR));
        }
        if key.starts_with(&format!("{ENV_PREFIX}_")) {
            err(format!(
                "{} W | pkg/flags: unrecognized environment variable {key}={}\n",
                crate::clock::capnslog(),
                value.to_string_lossy()
            ));
        }
    }
    Ok(())
}

/// The printer the global flags ask for.
pub fn printer(flags: &Flags) -> Result<Printer, Exit> {
    let format = Format::parse(&flags.string("write-out"))
        .ok_or_else(|| Exit::error(EXIT_BAD_FEATURE, "unsupported output format"))?;
    Ok(Printer { format, hex: flags.bool("hex"), value_only: false })
}

/// A connected client with what commands need around it.
pub struct Session {
    pub client: Client,
    pub printer: Printer,
    /// The endpoints as given.
    pub endpoints: Vec<String>,
    /// How clientv3 names its connection in log lines
    /// (`endpoint://client-<uuid>/<first endpoint>`).
    pub target: String,
}

/// A random UUID (v4), as clientv3 names its client.
fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-4{}-{:x}{}-{}", &hex[0..8], &hex[8..12], &hex[13..16], 8 | (b[8] & 3), &hex[17..20], &hex[20..32])
}

/// The checks and settings shared by every command that talks to etcd:
/// environment, printer, `--debug`, and the options ketchctl does not have.
pub fn prepare(invocation: &mut Invocation) -> Result<Printer, Exit> {
    apply_env(&invocation.path, &mut invocation.flags)?;
    let flags = &invocation.flags;
    if flags.bool("debug") {
        let mut lines = String::new();
        for flag in flags.inherited() {
            lines.push_str(&format!("{}={}\n", flag_env_name(flag.spec.name), flag.value.display()));
        }
        err(lines);
    }
    crate::secure::check_flags(flags)?;
    ask_password(&mut invocation.flags)?;
    // etcdctl checks the output format last.
    printer(&invocation.flags)
}

/// etcdctl's `authCfgFromCmd`: `--user name` without a password (neither
/// `name:password` nor `--password`) asks for it on the terminal; the
/// answer is kept as `--password`.
fn ask_password(flags: &mut Flags) -> Result<(), Exit> {
    let user = flags.string("user");
    if user.is_empty() || !flags.string("password").is_empty() || user.contains(':') {
        return Ok(());
    }
    let password = crate::password::ask("Password: ").map_err(|e| Exit::error(EXIT_ERROR, e))?;
    let _ = flags.set("password", &password);
    Ok(())
}

/// The user name and password of `--user` and `--password`, if both are
/// there (clientv3 authenticates only then).
pub fn credentials(flags: &Flags) -> Option<(String, String)> {
    let user = flags.string("user");
    let password = flags.string("password");
    let (name, password) = if password.is_empty() {
        let (name, password) = user.split_once(':')?;
        (name.to_string(), password.to_string())
    } else {
        (user, password)
    };
    (!name.is_empty() && !password.is_empty()).then_some((name, password))
}

/// Client options from the global flags.
pub fn client_options(flags: &Flags) -> ClientOptions {
    let command_timeout = flags.duration("command-timeout");
    let mut options = ClientOptions::new();
    if let Some((name, password)) = credentials(flags) {
        options = options.credentials(name, password);
    }
    options
        .dial_timeout(flags.duration("dial-timeout"))
        .request_timeout(command_timeout)
        .attempt_timeout(command_timeout)
        .keep_alive_interval(flags.duration("keepalive-time").max(KEEPALIVE_TIME_MIN))
        .keep_alive_timeout(flags.duration("keepalive-timeout"))
}

/// etcdctl's `mustClientFromCmd`.
pub async fn connect(invocation: &mut Invocation) -> Result<Session, Exit> {
    let printer = prepare(invocation)?;
    let flags = &invocation.flags;
    // From `--discovery-srv`'s SRV records, or `--endpoints`.
    let endpoints = crate::secure::endpoints(flags).await?;
    connect_to(flags, endpoints, printer).await
}

/// A session on `endpoints` with the global flags' settings.
pub async fn connect_to(flags: &Flags, endpoints: Vec<String>, printer: Printer) -> Result<Session, Exit> {
    let first = endpoints.first().map_or("", |e| crate::secure::host_port(e));
    let target = format!("endpoint://client-{}/{first}", uuid());
    // TLS from `--cacert`, `--cert`, `--key`, `--insecure-transport`, ...
    let tls = crate::secure::tls_options(flags)?;
    let dialed = crate::secure::client_endpoints(&endpoints, tls.is_some());
    let options = match tls {
        Some(tls) => client_options(flags).tls(tls),
        None => client_options(flags),
    };
    let client = Client::connect(&dialed, options).await.map_err(|e| {
        // A failed authentication, logged as clientv3 logs it.
        crate::error::log_failed_request(&target, &e);
        Exit::error(EXIT_BAD_CONNECTION, crate::error::message(&e))
    })?;
    if credentials(flags).is_some() && !client.has_token() {
        // clientv3 goes on without a token, after logging the refusal.
        let refusal = ketch_client::EtcdError::new(
            ketch_client::Code::FailedPrecondition,
            ketch_client::ErrorKind::AuthNotEnabled.message(),
        );
        crate::error::log_failed_request(&target, &ketch_client::Error::Server(refusal));
    }
    Ok(Session { client, printer, endpoints, target })
}

impl Session {
    /// Logs a failed unary request as clientv3 does, and passes it on.
    pub fn logged<T>(&self, result: ketch_client::Result<T>) -> ketch_client::Result<T> {
        if let Err(e) = &result {
            crate::error::log_failed_request(&self.target, e);
        }
        result
    }

    /// Like [`Session::logged`] for a request to one endpoint
    /// (clientv3 dials it directly: `passthrough:///<endpoint>`).
    pub fn logged_on<T>(&self, endpoint: &str, result: ketch_client::Result<T>) -> ketch_client::Result<T> {
        if let Err(e) = &result {
            crate::error::log_failed_request(&format!("passthrough:///{endpoint}"), e);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_variables() {
        assert_eq!(flag_env_name("dial-timeout"), "ETCDCTL_DIAL_TIMEOUT");
        assert_eq!(flag_env_name("write-out"), "ETCDCTL_WRITE_OUT");
        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
    }

    #[test]
    fn credentials_as_etcdctl_reads_them() {
        let creds = |args: &[&str]| match crate::cli::parse(args.iter().map(std::ffi::OsString::from).collect()) {
            Ok(crate::cli::Parsed::Run(inv)) => credentials(&inv.flags),
            _ => panic!("{args:?} does not parse"),
        };
        let pair = |n: &str, p: &str| Some((n.to_string(), p.to_string()));
        assert_eq!(creds(&["get", "k"]), None);
        assert_eq!(creds(&["get", "k", "--user", "root:pw"]), pair("root", "pw"));
        assert_eq!(creds(&["get", "k", "--user", "root:p:w"]), pair("root", "p:w"));
        // With --password, the whole of --user is the name.
        assert_eq!(creds(&["get", "k", "--user", "a:b", "--password", "pw"]), pair("a:b", "pw"));
        // clientv3 authenticates only with both a name and a password.
        assert_eq!(creds(&["get", "k", "--user", ":pw"]), None);
        assert_eq!(creds(&["get", "k", "--user", "root:"]), None);
        assert_eq!(creds(&["get", "k", "--password", "pw"]), None);
    }
}
