//! The command line: etcdctl's command tree and flags, parsed with clap the
//! way etcdctl's cobra/pflag parse them.
//!
//! - Flags are Go-style: `--flag=value`, `--flag value`, `-w json`,
//!   `-wjson`; bools are `--prefix` or `--prefix=false` (a bare `false`
//!   after a bool flag is an argument); a repeated flag keeps the last
//!   value (`--endpoints` appends).
//! - Global flags go before or after the command; flags and arguments mix
//!   freely; `--` ends the flags.
//! - Commands may be abbreviated to a unique prefix (`etcdctl lea gr 10`).
//! - Errors and help are etcdctl's texts: `--help` prints the command's
//!   usage; a flag error prints it on stdout and `Error: <pflag's message>`
//!   on stderr, exit 1.
//!
//! Which flags each command has, with types and defaults, comes from the
//! help texts ([`crate::help`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::error::{EXIT_ERROR, Exit};
use crate::gofmt;
use crate::help::{self, FlagKind, FlagSpec};

/// The clap id of the positional arguments before `--`.
const ARGS: &str = "args";
/// The clap id of the arguments after `--`.
const DASH_ARGS: &str = "dash-args";

/// Flags ketchctl adds to etcdctl 3.4's (from etcdctl 3.5).
fn extra_flags(path: &str) -> Vec<FlagSpec> {
    match path {
        "watch" => vec![FlagSpec { name: "progress-notify", short: None, kind: FlagKind::Bool, default: "false" }],
        _ => Vec::new(),
    }
}

/// A parsed flag value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    Str(String),
    Int(i64),
    Duration(Duration),
    Strings(Vec<String>),
}

impl Value {
    /// Parses `raw` as a `kind` value, with pflag's error message.
    fn parse(kind: FlagKind, raw: &str) -> Result<Value, String> {
        Ok(match kind {
            FlagKind::Bool => Value::Bool(gofmt::parse_bool(raw)?),
            FlagKind::String => Value::Str(raw.to_string()),
            FlagKind::Int => Value::Int(gofmt::parse_int(raw, 0)?),
            FlagKind::Duration => Value::Duration(gofmt::parse_duration(raw)?),
            FlagKind::StringSlice => Value::Strings(split_csv(raw)),
        })
    }

    /// How etcdctl's `--debug` prints the value (Go's `%v` of the flag).
    pub fn display(&self) -> String {
        match self {
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Duration(d) => gofmt::format_duration(*d),
            Value::Strings(v) => gofmt::string_slice(v),
        }
    }
}

/// pflag's string slice syntax: comma-separated, empty for none.
fn split_csv(raw: &str) -> Vec<String> {
    if raw.is_empty() { Vec::new() } else { raw.split(',').map(str::to_string).collect() }
}

/// One flag of the command being run.
#[derive(Clone, Debug)]
pub struct Flag {
    pub spec: FlagSpec,
    pub value: Value,
    /// Set on the command line (pflag's `Changed`).
    pub changed: bool,
    /// Inherited from a parent command (`GLOBAL OPTIONS`), so settable
    /// through `ETCDCTL_*`.
    pub inherited: bool,
}

/// The flags of the command being run, by name.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    flags: BTreeMap<String, Flag>,
}

impl Flags {
    pub fn get(&self, name: &str) -> Option<&Flag> {
        self.flags.get(name)
    }

    pub fn bool(&self, name: &str) -> bool {
        matches!(self.get(name).map(|f| &f.value), Some(Value::Bool(true)))
    }

    pub fn string(&self, name: &str) -> String {
        match self.get(name).map(|f| &f.value) {
            Some(Value::Str(s)) => s.clone(),
            _ => String::new(),
        }
    }

    pub fn int(&self, name: &str) -> i64 {
        match self.get(name).map(|f| &f.value) {
            Some(Value::Int(i)) => *i,
            _ => 0,
        }
    }

    pub fn duration(&self, name: &str) -> Duration {
        match self.get(name).map(|f| &f.value) {
            Some(Value::Duration(d)) => *d,
            _ => Duration::ZERO,
        }
    }

    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.get(name).map(|f| &f.value) {
            Some(Value::Strings(v)) => v.clone(),
            _ => Vec::new(),
        }
    }

    /// The inherited flags, by name (sorted, as pflag's `VisitAll`).
    pub fn inherited(&self) -> impl Iterator<Item = &Flag> {
        self.flags.values().filter(|f| f.inherited)
    }

    /// Sets a flag from its environment variable (pflag's `Set`): a
    /// string slice appends to a value given on the command line.
    pub fn set(&mut self, name: &str, raw: &str) -> Result<(), String> {
        let Some(flag) = self.flags.get_mut(name) else { return Ok(()) };
        let value = Value::parse(flag.spec.kind, raw)?;
        flag.value = match (&flag.value, value) {
            (Value::Strings(old), Value::Strings(new)) if flag.changed => {
                Value::Strings(old.iter().cloned().chain(new).collect())
            }
            (_, value) => value,
        };
        Ok(())
    }
}

/// A command to run.
#[derive(Debug)]
pub struct Invocation {
    /// The command path, e.g. `lease grant`.
    pub path: String,
    /// The arguments, those after `--` included (cobra's `args`), as text
    /// (invalid UTF-8 replaced).
    pub args: Vec<String>,
    /// The same arguments as the bytes given (keys and values).
    pub arg_bytes: Vec<Vec<u8>>,
    /// Arguments after `--` (`None` without `--`).
    pub dash_args: Option<Vec<String>>,
    pub flags: Flags,
    /// The raw command line (after the program name), for commands that
    /// look at it as etcdctl does (`watch ... -- <command>`).
    pub raw: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run(Invocation),
    /// Print this help text and exit 0.
    Help(&'static str),
}

/// The flags defined on `path`: its own, then those inherited from parent
/// groups (the root's are clap-global and not repeated here).
fn command_flags(path: &str) -> (Vec<FlagSpec>, Vec<FlagSpec>) {
    let text = help::text(path).unwrap_or_default();
    let globals = global_flags();
    // The root lists the global flags among its own.
    let mut local: Vec<FlagSpec> =
        help::flags(text, "OPTIONS:").into_iter().filter(|f| !globals.iter().any(|g| g.name == f.name)).collect();
    local.extend(extra_flags(path));
    let inherited: Vec<FlagSpec> = help::flags(text, "GLOBAL OPTIONS:")
        .into_iter()
        .filter(|f| !globals.iter().any(|g| g.name == f.name))
        .collect();
    (local, inherited)
}

/// The root's flags that every command inherits (all but `--help`).
fn global_flags() -> Vec<FlagSpec> {
    help::flags(help::ROOT, "OPTIONS:").into_iter().filter(|f| f.name != "help").collect()
}

fn clap_arg(spec: &FlagSpec) -> Arg {
    let mut arg = Arg::new(spec.name).long(spec.name);
    if let Some(short) = spec.short {
        arg = arg.short(short);
    }
    match spec.kind {
        FlagKind::Bool => arg.num_args(0..=1).require_equals(true).default_missing_value("true").action(ArgAction::Set),
        FlagKind::StringSlice => arg.num_args(1).allow_hyphen_values(true).action(ArgAction::Append),
        _ => arg.num_args(1).allow_hyphen_values(true).action(ArgAction::Set),
    }
}

/// The clap command for `path` and its subcommands; `globals`: with the
/// global flags (a request line of `txn` has none).
fn clap_command(path: &'static str, globals: bool) -> Command {
    let name = path.rsplit(' ').next().unwrap_or(path);
    let (local, inherited) = command_flags(path);
    let mut cmd = Command::new(name)
        .disable_help_flag(true)
        .disable_help_subcommand(true)
        .disable_version_flag(true)
        .args_override_self(true)
        .infer_subcommands(true);
    // Global flags are defined on every command (not as clap globals): each
    // level then keeps its own occurrences, in command-line order, and a
    // repeated `--endpoints` can append across levels as in pflag.
    let global = if globals { global_flags() } else { Vec::new() };
    for spec in local.iter().chain(inherited.iter()).chain(global.iter()) {
        cmd = cmd.arg(clap_arg(spec));
    }
    let children = help::children(path);
    if children.is_empty() || !path.is_empty() {
        // Leaves take arguments; groups accept any (and print their help).
        let any_bytes = || clap::builder::OsStringValueParser::new();
        cmd = cmd
            .arg(Arg::new(ARGS).num_args(0..).action(ArgAction::Append).value_parser(any_bytes()))
            .arg(Arg::new(DASH_ARGS).num_args(0..).last(true).action(ArgAction::Append).value_parser(any_bytes()));
    }
    for child in children {
        cmd = cmd.subcommand(clap_command(child, globals));
    }
    cmd
}

fn root_command() -> Command {
    clap_command("", true).name("etcdctl")
}

/// Why a command line could not be parsed.
enum Failure {
    /// A flag error on the command at `path`: pflag's message.
    Usage { path: String, message: String },
    /// Anything else, ready to print.
    Exit(Exit),
}

/// Parses the command line (without the program name).
pub fn parse(raw: Vec<OsString>) -> Result<Parsed, Exit> {
    parse_inner(raw).map_err(|f| match f {
        Failure::Usage { path, message } => usage_error(&path, &message),
        Failure::Exit(exit) => exit,
    })
}

/// Parses a command line given inside another command (txn's request
/// lines, interactive watch's commands) as etcdctl does: a fresh command
/// without the global flags. An error is `(command path, message)`.
pub fn parse_local(raw: Vec<String>) -> Result<Parsed, (String, String)> {
    let raw: Vec<OsString> = raw.into_iter().map(OsString::from).collect();
    let mut root = Command::new("etcdctl")
        .disable_help_flag(true)
        .disable_help_subcommand(true)
        .disable_version_flag(true)
        .infer_subcommands(true);
    for path in ["get", "put", "del", "watch"] {
        root = root.subcommand(clap_command(path, false));
    }
    parse_with(root, raw).map_err(|f| match f {
        Failure::Usage { path, message } => (path, message),
        Failure::Exit(exit) => {
            let message = exit.stderr.lines().next().unwrap_or_default().trim_start_matches("Error: ").to_string();
            (String::new(), message)
        }
    })
}

fn parse_inner(raw: Vec<OsString>) -> Result<Parsed, Failure> {
    parse_with(root_command(), raw)
}

fn parse_with(root: Command, raw_os: Vec<OsString>) -> Result<Parsed, Failure> {
    let raw: Vec<String> = raw_os.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let matches = root
        .try_get_matches_from(std::iter::once(OsString::from("etcdctl")).chain(raw_os))
        .map_err(|e| clap_error(&e, &raw))?;
    let mut path = String::new();
    let mut leaf = &matches;
    let mut levels = vec![&matches];
    while let Some((name, sub)) = leaf.subcommand() {
        path = if path.is_empty() { name.to_string() } else { format!("{path} {name}") };
        leaf = sub;
        levels.push(sub);
    }
    let flags = collect_flags(&path, &levels).map_err(|message| Failure::Usage { path: path.clone(), message })?;
    let help_text = help::text(&path).unwrap_or(help::ROOT);
    if flags.bool("help") {
        return Ok(Parsed::Help(help_text));
    }
    let bytes = |id: &str| -> Option<Vec<Vec<u8>>> {
        leaf.try_get_many::<OsString>(id).ok().flatten().map(|v| v.map(|a| a.as_bytes().to_vec()).collect())
    };
    let mut arg_bytes = bytes(ARGS).unwrap_or_default();
    let dash_bytes = bytes(DASH_ARGS);
    arg_bytes.extend(dash_bytes.iter().flatten().cloned());
    let text = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
    let args: Vec<String> = arg_bytes.iter().map(text).collect();
    let dash_args: Option<Vec<String>> = dash_bytes.map(|v| v.iter().map(text).collect());
    if path.is_empty() || !help::children(&path).is_empty() {
        // A group alone prints its help (cobra).
        return Ok(Parsed::Help(help_text));
    }
    Ok(Parsed::Run(Invocation { path, args, arg_bytes, dash_args, flags, raw }))
}

/// Every flag of the command at `path` with its value, validated in
/// command-line order (the first bad value is the error, as in pflag).
fn collect_flags(path: &str, levels: &[&ArgMatches]) -> Result<Flags, String> {
    let (local, inherited) = command_flags(path);
    let mut specs: Vec<(FlagSpec, bool)> = local.into_iter().map(|f| (f, false)).collect();
    specs.extend(inherited.into_iter().map(|f| (f, true)));
    specs.extend(global_flags().into_iter().map(|f| (f, true)));
    // Every occurrence of every flag: (position on the command line, flag, value).
    let mut given: Vec<(usize, FlagSpec, bool, String)> = Vec::new();
    let mut flags = Flags::default();
    for (spec, inherited) in specs {
        let mut seen: Vec<usize> = Vec::new();
        for matches in levels {
            // Flags the parser did not define (the global ones of a request
            // line) keep their defaults.
            let on_command_line = matches.try_contains_id(spec.name).is_ok()
                && matches.value_source(spec.name) == Some(ValueSource::CommandLine);
            if !on_command_line {
                continue;
            }
            let values = matches.get_many::<String>(spec.name).into_iter().flatten();
            let indices = matches.indices_of(spec.name).into_iter().flatten();
            // A global flag shows at every level below where it was given,
            // with the same positions.
            for (index, value) in indices.zip(values) {
                if !seen.contains(&index) {
                    seen.push(index);
                    given.push((index, spec.clone(), inherited, value.clone()));
                }
            }
        }
        let value = Value::parse(spec.kind, spec.default).unwrap_or(Value::Str(spec.default.to_string()));
        flags.flags.insert(spec.name.to_string(), Flag { spec, value, changed: false, inherited });
    }
    given.sort_by_key(|(index, ..)| *index);
    for (_, spec, inherited, raw) in given {
        let value = Value::parse(spec.kind, &raw).map_err(|e| {
            let name = match spec.short {
                Some(short) => format!("-{short}, --{}", spec.name),
                None => format!("--{}", spec.name),
            };
            format!("invalid argument {} for {} flag: {e}", gofmt::quote(raw.as_bytes()), gofmt::quote(name.as_bytes()))
        })?;
        let value = match (flags.flags.get(spec.name).map(|f| (&f.value, f.changed)), value) {
            // pflag's string slice: a repeated flag appends.
            (Some((Value::Strings(old), true)), Value::Strings(new)) => {
                Value::Strings(old.iter().cloned().chain(new).collect())
            }
            (_, value) => value,
        };
        flags.flags.insert(spec.name.to_string(), Flag { spec, value, changed: true, inherited });
    }
    Ok(flags)
}

/// cobra's reaction to a flag error: the command's usage on stdout,
/// the error twice on stderr, exit 1.
pub fn usage_error(path: &str, message: &str) -> Exit {
    Exit {
        code: EXIT_ERROR,
        stdout: help::text(path).unwrap_or(help::ROOT).to_string(),
        stderr: format!("Error: {message}\n\nError: {message}\n"),
    }
}

/// The command path the raw arguments name, as far as it is valid
/// (for usage errors).
fn command_path_of(raw: &[String]) -> String {
    let globals = global_flags();
    let mut path = String::new();
    let mut skip_next = false;
    for arg in raw {
        if skip_next {
            skip_next = false;
            continue;
        }
        if arg == "--" {
            break;
        }
        if let Some(flag) = arg.strip_prefix('-') {
            // A value in the next argument, for a known non-bool flag given
            // without `=`.
            let (local, inherited) = command_flags(&path);
            let takes_value = |f: &FlagSpec| {
                f.kind != FlagKind::Bool
                    && (flag.strip_prefix('-') == Some(f.name) || f.short.is_some_and(|s| flag == s.to_string()))
            };
            skip_next = local.iter().chain(inherited.iter()).chain(globals.iter()).any(takes_value);
            continue;
        }
        match resolve_child(&path, arg) {
            Some(child) => path = child.to_string(),
            None => break,
        }
    }
    path
}

/// The child of `path` named `name` or uniquely abbreviated by it.
fn resolve_child(path: &str, name: &str) -> Option<&'static str> {
    let children = help::children(path);
    let last = |p: &str| p.rsplit(' ').next().unwrap_or(p).to_string();
    if let Some(exact) = children.iter().find(|c| last(c) == name) {
        return Some(exact);
    }
    let prefixed: Vec<&&str> = children.iter().filter(|c| last(c).starts_with(name)).collect();
    match prefixed.as_slice() {
        [only] => Some(only),
        _ => None,
    }
}

/// The raw argument that starts with `start` (for messages quoting it).
fn raw_token<'a>(raw: &'a [String], start: &str) -> Option<&'a str> {
    raw.iter().find(|a| a.starts_with(start)).map(String::as_str)
}

fn clap_error(e: &clap::Error, raw: &[String]) -> Failure {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind: ContextKind| match e.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        Some(ContextValue::Strings(v)) => v.first().cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let path = command_path_of(raw);
    match e.kind() {
        ErrorKind::InvalidSubcommand => Failure::Exit(unknown_command(&context(ContextKind::InvalidSubcommand))),
        ErrorKind::UnknownArgument => {
            let arg = context(ContextKind::InvalidArg);
            if let Some(long) = arg.strip_prefix("--") {
                let name = long.split('=').next().unwrap_or(long);
                return Failure::Usage { path, message: format!("unknown flag: --{name}") };
            }
            if let Some(short) = arg.strip_prefix('-') {
                let c = short.chars().next().unwrap_or('-');
                let token = raw_token(raw, &arg).unwrap_or(&arg);
                return Failure::Usage { path, message: format!("unknown shorthand flag: '{c}' in {token}") };
            }
            if path.is_empty() {
                return Failure::Exit(unknown_command(&arg));
            }
            Failure::Usage { path, message: format!("unknown command {}", gofmt::quote(arg.as_bytes())) }
        }
        ErrorKind::InvalidValue | ErrorKind::NoEquals | ErrorKind::TooFewValues => {
            let arg = context(ContextKind::InvalidArg);
            let long = arg.split(' ').next().unwrap_or(&arg).trim_start_matches('-').to_string();
            let (local, inherited) = command_flags(&path);
            let short = local
                .iter()
                .chain(inherited.iter())
                .chain(global_flags().iter())
                .find(|f| f.name == long)
                .and_then(|f| f.short);
            let typed_short = short.filter(|s| raw.last().is_some_and(|last| *last == format!("-{s}")));
            let message = match typed_short {
                Some(s) => format!("flag needs an argument: '{s}' in -{s}"),
                None => format!("flag needs an argument: --{long}"),
            };
            Failure::Usage { path, message }
        }
        _ => Failure::Usage { path, message: e.kind().as_str().unwrap_or("invalid command line").to_string() },
    }
}

/// etcdctl's commands in the order it adds them (cobra suggests in it).
const ROOT_COMMAND_ORDER: &[&str] = &[
    "get",
    "put",
    "del",
    "txn",
    "compaction",
    "alarm",
    "defrag",
    "endpoint",
    "move-leader",
    "watch",
    "version",
    "lease",
    "member",
    "snapshot",
    "make-mirror",
    "migrate",
    "lock",
    "elect",
    "auth",
    "user",
    "role",
    "check",
    "help",
    "completion",
];

/// cobra's unknown command error, with its suggestions.
fn unknown_command(name: &str) -> Exit {
    let lower = name.to_lowercase();
    let suggestions: Vec<String> = ROOT_COMMAND_ORDER
        .iter()
        .filter(|c| levenshtein(&lower, &c.to_lowercase()) <= 2 || c.to_lowercase().starts_with(&lower))
        .map(|c| format!("\t{c}\n"))
        .collect();
    let mut message = format!("unknown command {} for \"etcdctl\"", gofmt::quote(name.as_bytes()));
    if !suggestions.is_empty() {
        message.push_str("\n\nDid you mean this?\n");
        message.push_str(&suggestions.concat());
    }
    Exit {
        code: EXIT_ERROR,
        stdout: String::new(),
        stderr: format!("Error: {message}\nRun 'etcdctl --help' for usage.\nError: {message}\n"),
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut prev = row[0];
        row[0] = i;
        for j in 1..=b.len() {
            let cur = row[j];
            row[j] = if a[i - 1] == b[j - 1] { prev } else { 1 + prev.min(row[j]).min(row[j - 1]) };
            prev = cur;
        }
    }
    row[b.len()]
}

/// `etcdctl help [command]`.
pub fn help_command(args: &[String]) -> Result<&'static str, Exit> {
    if args.is_empty() {
        return Ok(help::ROOT);
    }
    let mut path = String::new();
    for arg in args {
        match resolve_child(&path, arg) {
            Some(child) => path = child.to_string(),
            None => {
                let topics: Vec<String> = args.iter().map(|a| format!("`{a}`")).collect();
                // cobra has not added the root's --help flag at this point.
                let usage: String =
                    help::ROOT.split_inclusive('\n').filter(|l| !l.starts_with("  -h, --help[=false]")).collect();
                return Err(Exit {
                    code: 0,
                    stdout: usage,
                    stderr: format!("Unknown help topic [{}]\n", topics.join(" ")),
                });
            }
        }
    }
    Ok(help::text(&path).unwrap_or(help::ROOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Invocation {
        match parse(args.iter().map(OsString::from).collect()) {
            Ok(Parsed::Run(i)) => i,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn flags_mix_with_arguments_and_globals_go_anywhere() {
        let i = run(&["-w", "json", "get", "a", "--prefix", "--limit", "-1", "b", "--hex=false"]);
        assert_eq!(i.path, "get");
        assert_eq!(i.args, vec!["a", "b"]);
        assert!(i.flags.bool("prefix"));
        assert_eq!(i.flags.int("limit"), -1);
        assert_eq!(i.flags.string("write-out"), "json");
        assert!(i.flags.get("write-out").is_some_and(|f| f.changed));
        assert!(!i.flags.bool("hex"));
        assert!(i.flags.get("keys-only").is_some_and(|f| !f.changed));
        assert_eq!(i.flags.duration("dial-timeout"), Duration::from_secs(2));
    }

    #[test]
    fn bools_take_only_attached_values_and_repeats_keep_the_last() {
        let i = run(&["get", "a", "--prefix", "false", "--limit=3", "--limit", "4", "-wjson"]);
        assert_eq!(i.args, vec!["a", "false"]);
        assert_eq!(i.flags.int("limit"), 4);
        assert_eq!(i.flags.string("write-out"), "json");
    }

    #[test]
    fn endpoints_append_and_dash_arguments_are_apart() {
        let i = run(&["--endpoints=a:1,b:2", "watch", "k", "--endpoints", "c:3", "--", "echo", "-n"]);
        assert_eq!(i.flags.strings("endpoints"), vec!["a:1", "b:2", "c:3"]);
        assert_eq!(i.args, vec!["k", "echo", "-n"]);
        assert_eq!(i.dash_args, Some(vec!["echo".to_string(), "-n".to_string()]));
    }

    #[test]
    fn commands_can_be_abbreviated() {
        assert_eq!(run(&["lea", "gr", "10"]).path, "lease grant");
        assert_eq!(run(&["endpoint", "status", "--cluster"]).path, "endpoint status");
    }

    #[test]
    fn bad_values_are_pflag_errors() {
        let e = parse(["get", "a", "--limit", "x"].iter().map(OsString::from).collect()).err();
        let stderr = e.map(|e| e.stderr).unwrap_or_default();
        assert!(
            stderr.starts_with(
                "Error: invalid argument \"x\" for \"--limit\" flag: strconv.ParseInt: parsing \"x\": invalid syntax\n"
            ),
            "{stderr}"
        );
        let e = parse(vec![OsString::from("gett")]).err().map(|e| e.stderr).unwrap_or_default();
        assert!(e.starts_with("Error: unknown command \"gett\" for \"etcdctl\"\n\nDid you mean this?\n\tget\n"), "{e}");
    }
}
