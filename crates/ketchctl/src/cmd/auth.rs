//! `user ...`, `role ...` and `auth enable|disable` (etcdctl's
//! `user_command.go`, `role_command.go`, `auth_command.go`).

use ketch_client::{ErrorKind, PermissionType};

use crate::cli::Invocation;
use crate::error::{CtlResult, EXIT_BAD_ARGS, EXIT_ERROR, Exit, message, out};
use crate::password;
use crate::printer::prefix_end;
use crate::session::{self, Session};

/// A failed request: logged as clientv3 logs it, then etcdctl's error.
fn failed<T>(s: &Session, result: ketch_client::Result<T>) -> Result<T, Exit> {
    s.logged(result).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))
}

fn bad_args(text: &str) -> Exit {
    Exit::error(EXIT_BAD_ARGS, text)
}

/// etcdctl's `readPasswordInteractive`: the password twice, on the
/// terminal.
fn read_password_interactive(name: &str) -> Result<String, Exit> {
    let ask_failed = |e: std::io::Error| Exit::error(EXIT_BAD_ARGS, format!("failed to ask password: {e}"));
    let first = password::ask(&format!("Password of {name}: ")).map_err(ask_failed)?;
    if first.is_empty() {
        return Err(bad_args("empty password"));
    }
    let second = password::ask(&format!("Type password of {name} again for confirmation: ")).map_err(ask_failed)?;
    if first != second {
        return Err(bad_args("given passwords are different"));
    }
    Ok(first)
}

/// `user add <name or name:password> [--interactive] [--new-user-password] [--no-password]`.
pub async fn user_add(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(bad_args("user add command requires user name as its argument"));
    }
    let arg = inv.args[0].clone();
    let no_password = inv.flags.bool("no-password");
    let (user, password) = if no_password {
        (arg, String::new())
    } else if !inv.flags.string("new-user-password").is_empty() {
        (arg, inv.flags.string("new-user-password"))
    } else {
        match arg.split_once(':') {
            None if inv.flags.bool("interactive") => {
                let password = read_password_interactive(&arg)?;
                (arg, password)
            }
            None => (arg, password::scan_word()),
            Some(("", _)) => return Err(bad_args("empty user name is not allowed")),
            Some((user, password)) => (user.to_string(), password.to_string()),
        }
    };
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().user_add_with_options(&user, &password, no_password).await)?;
    s.printer.auth_change(format!("User {user} created\n").as_bytes(), &r, r.header.as_ref())
}

/// `user delete <name>`.
pub async fn user_delete(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(bad_args("user delete command requires user name as its argument"));
    }
    let user = inv.args[0].clone();
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().user_delete(&user).await)?;
    s.printer.auth_change(format!("User {user} deleted\n").as_bytes(), &r, r.header.as_ref())
}

/// `user get <name> [--detail]`.
pub async fn user_get(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(bad_args("user get command requires user name as its argument"));
    }
    let user = inv.args[0].clone();
    let detail = inv.flags.bool("detail");
    let s = session::connect(&mut inv).await?;
    let auth = s.client.auth();
    let r = failed(&s, auth.user_get(&user).await)?;
    if !detail {
        return s.printer.user_get(&user, &r);
    }
    out(format!("User: {user}\n"));
    for role in &r.roles {
        out("\n");
        let role_r = failed(&s, auth.role_get(role).await)?;
        s.printer.role_get(role, &role_r)?;
    }
    Ok(())
}

/// `user list`.
pub async fn user_list(mut inv: Invocation) -> CtlResult {
    if !inv.args.is_empty() {
        return Err(bad_args("user list command requires no arguments"));
    }
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().user_list().await)?;
    s.printer.user_list(&r)
}

/// `user passwd <name> [--interactive]`.
pub async fn user_passwd(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(bad_args("user passwd command requires user name as its argument"));
    }
    let user = inv.args[0].clone();
    let password =
        if inv.flags.bool("interactive") { read_password_interactive(&user)? } else { password::scan_word() };
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().user_change_password(&user, &password).await)?;
    s.printer.auth_change(b"Password updated\n", &r, r.header.as_ref())
}

/// `user grant-role <name> <role>`.
pub async fn user_grant_role(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 2 {
        return Err(bad_args("user grant command requires user name and role name as its argument"));
    }
    let (user, role) = (inv.args[0].clone(), inv.args[1].clone());
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().user_grant_role(&user, &role).await)?;
    s.printer.auth_change(format!("Role {role} is granted to user {user}\n").as_bytes(), &r, r.header.as_ref())
}

/// `user revoke-role <name> <role>`.
pub async fn user_revoke_role(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 2 {
        return Err(bad_args("user revoke-role requires user name and role name as its argument"));
    }
    let (user, role) = (inv.args[0].clone(), inv.args[1].clone());
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().user_revoke_role(&user, &role).await)?;
    s.printer.auth_change(format!("Role {role} is revoked from user {user}\n").as_bytes(), &r, r.header.as_ref())
}

/// `role add <name>`.
pub async fn role_add(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(bad_args("role add command requires role name as its argument"));
    }
    let role = inv.args[0].clone();
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().role_add(&role).await)?;
    s.printer.auth_change(format!("Role {role} created\n").as_bytes(), &r, r.header.as_ref())
}

/// `role delete <name>`.
pub async fn role_delete(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(bad_args("role delete command requires role name as its argument"));
    }
    let role = inv.args[0].clone();
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().role_delete(&role).await)?;
    s.printer.auth_change(format!("Role {role} deleted\n").as_bytes(), &r, r.header.as_ref())
}

/// `role get <name>`.
pub async fn role_get(mut inv: Invocation) -> CtlResult {
    if inv.args.len() != 1 {
        return Err(bad_args("role get command requires role name as its argument"));
    }
    let role = inv.args[0].clone();
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().role_get(&role).await)?;
    s.printer.role_get(&role, &r)
}

/// `role list`.
pub async fn role_list(mut inv: Invocation) -> CtlResult {
    if !inv.args.is_empty() {
        return Err(bad_args("role list command requires no arguments"));
    }
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().role_list().await)?;
    s.printer.role_list(&r)
}

/// clientv3's `StrToPermissionType`: `read`, `write` or `readwrite`, in
/// any case.
fn permission_type(name: &str) -> Result<PermissionType, Exit> {
    PermissionType::from_str_name(&name.to_uppercase())
        .ok_or_else(|| Exit::error(EXIT_BAD_ARGS, format!("invalid permission type: {name}")))
}

/// etcdctl's `permRange`: the key and range end of a permission from
/// `<key> [endkey]` and `--prefix` / `--from-key`.
fn perm_range(inv: &Invocation, args: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u8>), Exit> {
    let prefix = inv.flags.bool("prefix");
    let from_key = inv.flags.bool("from-key");
    let key = args[0].clone();
    if key.is_empty() {
        if prefix && from_key {
            return Err(bad_args("--from-key and --prefix flags are mutually exclusive"));
        }
        // The empty key as the interval ["\0", end): with either flag, every key.
        let end = if prefix || from_key { vec![0] } else { Vec::new() };
        return Ok((vec![0], end));
    }
    let end = match args.len() {
        1 if prefix && from_key => return Err(bad_args("--from-key and --prefix flags are mutually exclusive")),
        1 if prefix => prefix_end(&key),
        1 if from_key => vec![0],
        1 => Vec::new(),
        _ if prefix => return Err(bad_args("unexpected endkey argument with --prefix flag")),
        _ if from_key => return Err(bad_args("unexpected endkey argument with --from-key flag")),
        _ => args[1].clone(),
    };
    Ok((key, end))
}

/// `role grant-permission [--prefix|--from-key] <role> <read|write|readwrite> <key> [endkey]`.
pub async fn role_grant_permission(mut inv: Invocation) -> CtlResult {
    if inv.args.len() < 3 {
        return Err(bad_args(
            "role grant command requires role name, permission type, and key [endkey] as its argument",
        ));
    }
    let role = inv.args[0].clone();
    let permission = permission_type(&inv.args[1])?;
    let (key, end) = perm_range(&inv, &inv.arg_bytes[2..])?;
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().role_grant_permission(&role, key, end, permission).await)?;
    s.printer.auth_change(format!("Role {role} updated\n").as_bytes(), &r, r.header.as_ref())
}

/// `role revoke-permission [--prefix|--from-key] <role> <key> [endkey]`.
pub async fn role_revoke_permission(mut inv: Invocation) -> CtlResult {
    if inv.args.len() < 2 {
        return Err(bad_args("role revoke-permission command requires role name and key [endkey] as its argument"));
    }
    let role = inv.args[0].clone();
    let (key, end) = perm_range(&inv, &inv.arg_bytes[1..])?;
    let s = session::connect(&mut inv).await?;
    let r = failed(&s, s.client.auth().role_revoke_permission(&role, key, end.clone()).await)?;
    // etcdctl names the key as given (the empty key, not "\0").
    let given = &inv.arg_bytes[1];
    let mut line = Vec::new();
    if end.is_empty() {
        line.extend_from_slice(b"Permission of key ");
        line.extend_from_slice(given);
    } else {
        line.extend_from_slice(b"Permission of range [");
        line.extend_from_slice(given);
        if end == b"\0" {
            line.extend_from_slice(b", <open ended>");
        } else {
            line.extend_from_slice(b", ");
            line.extend_from_slice(&end);
            line.push(b')');
        }
    }
    line.extend_from_slice(format!(" is revoked from role {role}\n").as_bytes());
    s.printer.auth_change(&line, &r, r.header.as_ref())
}

/// `auth enable`: as etcdctl, creates role `root` and grants it to user
/// `root` if that is what the server asks for.
pub async fn auth_enable(mut inv: Invocation) -> CtlResult {
    if !inv.args.is_empty() {
        return Err(bad_args("auth enable command does not accept any arguments"));
    }
    let s = session::connect(&mut inv).await?;
    let auth = s.client.auth();
    loop {
        match s.logged(auth.auth_enable().await) {
            Ok(_) => break,
            Err(e) if e.kind() == Some(ErrorKind::RootRoleNotExist) => {
                failed(&s, auth.role_add("root").await)?;
                failed(&s, auth.user_grant_role("root", "root").await)?;
            }
            Err(e) => return Err(Exit::error(EXIT_ERROR, message(&e))),
        }
    }
    out("Authentication Enabled\n");
    Ok(())
}

/// `auth disable`.
pub async fn auth_disable(mut inv: Invocation) -> CtlResult {
    if !inv.args.is_empty() {
        return Err(bad_args("auth disable command does not accept any arguments"));
    }
    let s = session::connect(&mut inv).await?;
    failed(&s, s.client.auth().auth_disable().await)?;
    out("Authentication Disabled\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_types_in_any_case() {
        assert_eq!(permission_type("read").ok(), Some(PermissionType::Read));
        assert_eq!(permission_type("ReadWrite").ok(), Some(PermissionType::Readwrite));
        let e = permission_type("rw").err().map(|e| (e.code, e.stderr));
        assert_eq!(e, Some((EXIT_BAD_ARGS, "Error: invalid permission type: rw\n".to_string())));
    }

    #[test]
    fn prefix_ends_as_clientv3() {
        assert_eq!(prefix_end(b"p/"), b"p0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
