//! etcdctl 3.4.23's help texts (`help/*.txt`, made by `help/regenerate.sh`),
//! keyed by command path. ketchctl prints them as they are, and reads each
//! command's flags (names, shorthands, types, defaults) from them, so the
//! flags and their help can never disagree.

pub const ROOT: &str = include_str!("../help/root.txt");

/// The usage cobra prints when a request line of `txn` has a bad flag.
pub const TXN_REQUEST_USAGE: &[(&str, &str)] = &[
    ("get", include_str!("../help/txn_get.txt")),
    ("put", include_str!("../help/txn_put.txt")),
    ("del", include_str!("../help/txn_del.txt")),
];

/// `(command path, help text)` of every command and command group.
pub const COMMANDS: &[(&str, &str)] = &[
    ("alarm", include_str!("../help/alarm.txt")),
    ("alarm disarm", include_str!("../help/alarm_disarm.txt")),
    ("alarm list", include_str!("../help/alarm_list.txt")),
    ("auth", include_str!("../help/auth.txt")),
    ("auth disable", include_str!("../help/auth_disable.txt")),
    ("auth enable", include_str!("../help/auth_enable.txt")),
    ("check", include_str!("../help/check.txt")),
    ("check datascale", include_str!("../help/check_datascale.txt")),
    ("check perf", include_str!("../help/check_perf.txt")),
    ("compaction", include_str!("../help/compaction.txt")),
    ("completion", include_str!("../help/completion.txt")),
    ("completion bash", include_str!("../help/completion_bash.txt")),
    ("completion fish", include_str!("../help/completion_fish.txt")),
    ("completion powershell", include_str!("../help/completion_powershell.txt")),
    ("completion zsh", include_str!("../help/completion_zsh.txt")),
    ("defrag", include_str!("../help/defrag.txt")),
    ("del", include_str!("../help/del.txt")),
    ("elect", include_str!("../help/elect.txt")),
    ("endpoint", include_str!("../help/endpoint.txt")),
    ("endpoint hashkv", include_str!("../help/endpoint_hashkv.txt")),
    ("endpoint health", include_str!("../help/endpoint_health.txt")),
    ("endpoint status", include_str!("../help/endpoint_status.txt")),
    ("get", include_str!("../help/get.txt")),
    ("help", include_str!("../help/help.txt")),
    ("lease", include_str!("../help/lease.txt")),
    ("lease grant", include_str!("../help/lease_grant.txt")),
    ("lease keep-alive", include_str!("../help/lease_keep-alive.txt")),
    ("lease list", include_str!("../help/lease_list.txt")),
    ("lease revoke", include_str!("../help/lease_revoke.txt")),
    ("lease timetolive", include_str!("../help/lease_timetolive.txt")),
    ("lock", include_str!("../help/lock.txt")),
    ("make-mirror", include_str!("../help/make-mirror.txt")),
    ("member", include_str!("../help/member.txt")),
    ("member add", include_str!("../help/member_add.txt")),
    ("member list", include_str!("../help/member_list.txt")),
    ("member promote", include_str!("../help/member_promote.txt")),
    ("member remove", include_str!("../help/member_remove.txt")),
    ("member update", include_str!("../help/member_update.txt")),
    ("migrate", include_str!("../help/migrate.txt")),
    ("move-leader", include_str!("../help/move-leader.txt")),
    ("put", include_str!("../help/put.txt")),
    ("role", include_str!("../help/role.txt")),
    ("role add", include_str!("../help/role_add.txt")),
    ("role delete", include_str!("../help/role_delete.txt")),
    ("role get", include_str!("../help/role_get.txt")),
    ("role grant-permission", include_str!("../help/role_grant-permission.txt")),
    ("role list", include_str!("../help/role_list.txt")),
    ("role revoke-permission", include_str!("../help/role_revoke-permission.txt")),
    ("snapshot", include_str!("../help/snapshot.txt")),
    ("snapshot restore", include_str!("../help/snapshot_restore.txt")),
    ("snapshot save", include_str!("../help/snapshot_save.txt")),
    ("snapshot status", include_str!("../help/snapshot_status.txt")),
    ("txn", include_str!("../help/txn.txt")),
    ("user", include_str!("../help/user.txt")),
    ("user add", include_str!("../help/user_add.txt")),
    ("user delete", include_str!("../help/user_delete.txt")),
    ("user get", include_str!("../help/user_get.txt")),
    ("user grant-role", include_str!("../help/user_grant-role.txt")),
    ("user list", include_str!("../help/user_list.txt")),
    ("user passwd", include_str!("../help/user_passwd.txt")),
    ("user revoke-role", include_str!("../help/user_revoke-role.txt")),
    ("version", include_str!("../help/version.txt")),
    ("watch", include_str!("../help/watch.txt")),
];

/// How a flag's value is read (pflag's value types as etcdctl uses them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagKind {
    /// `--flag`, `--flag=true|false`.
    Bool,
    String,
    /// An integer (`strconv.ParseInt(s, 0, 64)`).
    Int,
    /// A Go duration (`5s`).
    Duration,
    /// A comma-separated list; repeating the flag appends.
    StringSlice,
}

/// One flag as its help line describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagSpec {
    pub name: &'static str,
    pub short: Option<char>,
    pub kind: FlagKind,
    pub default: &'static str,
}

/// The help text of the command at `path` (`""` is the root).
pub fn text(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some(ROOT);
    }
    COMMANDS.iter().find(|(p, _)| *p == path).map(|(_, t)| *t)
}

/// The direct subcommands of `path` (`""` is the root), in help order.
pub fn children(path: &str) -> Vec<&'static str> {
    let depth = if path.is_empty() { 0 } else { path.split(' ').count() };
    COMMANDS
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| p.split(' ').count() == depth + 1 && (path.is_empty() || p.starts_with(&format!("{path} "))))
        .collect()
}

/// The flags listed under `heading` (`OPTIONS:` or `GLOBAL OPTIONS:`).
pub fn flags(text: &'static str, heading: &str) -> Vec<FlagSpec> {
    text.lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(parse_flag_line)
        .collect()
}

/// Reads `  -w, --write-out="simple"\t...`, `      --prefix[=false]\t...`,
/// `      --limit=0\t...` and the like.
fn parse_flag_line(line: &'static str) -> Option<FlagSpec> {
    let spec = line.trim_start().split('\t').next()?;
    let (short, rest) = match spec.strip_prefix('-') {
        Some(r) if !r.starts_with('-') => {
            let short = r.chars().next()?;
            (Some(short), r.get(1..)?.trim_start_matches(", "))
        }
        _ => (None, spec),
    };
    let rest = rest.strip_prefix("--")?;
    if let Some((name, default)) = rest.split_once("[=") {
        return Some(FlagSpec { name, short, kind: FlagKind::Bool, default: default.trim_end_matches(']') });
    }
    let (name, default) = rest.split_once('=')?;
    let (kind, default) = if let Some(quoted) = default.strip_prefix('"') {
        (FlagKind::String, quoted.trim_end_matches('"'))
    } else if let Some(list) = default.strip_prefix('[') {
        (FlagKind::StringSlice, list.trim_end_matches(']'))
    } else if default.parse::<i64>().is_ok() {
        (FlagKind::Int, default)
    } else {
        (FlagKind::Duration, default)
    };
    Some(FlagSpec { name, short, kind, default })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_read_from_the_help() {
        let get = flags(text("get").unwrap_or_default(), "OPTIONS:");
        let limit = get.iter().find(|f| f.name == "limit").cloned();
        assert_eq!(limit, Some(FlagSpec { name: "limit", short: None, kind: FlagKind::Int, default: "0" }));
        let help = get.iter().find(|f| f.name == "help").cloned();
        assert_eq!(help.map(|f| (f.short, f.kind)), Some((Some('h'), FlagKind::Bool)));
        let global = flags(ROOT, "OPTIONS:");
        let w = global.iter().find(|f| f.name == "write-out").cloned();
        assert_eq!(
            w,
            Some(FlagSpec { name: "write-out", short: Some('w'), kind: FlagKind::String, default: "simple" })
        );
        let endpoints = global.iter().find(|f| f.name == "endpoints").map(|f| (f.kind, f.default));
        assert_eq!(endpoints, Some((FlagKind::StringSlice, "127.0.0.1:2379")));
        let timeout = global.iter().find(|f| f.name == "dial-timeout").map(|f| f.kind);
        assert_eq!(timeout, Some(FlagKind::Duration));
        let status = flags(text("endpoint status").unwrap_or_default(), "GLOBAL OPTIONS:");
        assert!(status.iter().any(|f| f.name == "cluster"));
    }

    #[test]
    fn the_command_tree_comes_from_the_paths() {
        assert!(children("").contains(&"get"));
        assert!(children("").contains(&"lease"));
        assert!(!children("").contains(&"lease grant"));
        assert_eq!(
            children("lease"),
            vec!["lease grant", "lease keep-alive", "lease list", "lease revoke", "lease timetolive"]
        );
    }
}
