//! `etcdctl txn`: compares, success and failure requests read from stdin,
//! one per line, each section ended by an empty line; with `-i` the
//! sections are prompted for. The grammar is etcdctl's:
//!
//! ```text
//! mod("k1") > "0"          <target>("<key>") <op> "<value>"; targets ver|version, c|create,
//! value("k2") = "v2"       m|mod, val|value; ops =, !=, <, >
//!
//! put k3 v3                get/put/del with their flags, words split as etcdctl's
//! get k1 --prefix          `argify` splits them ("double" and 'single' quotes)
//!
//! del k2
//!
//! ```

use std::io::BufRead;

use ketch_client::{Compare, CompareOp, Txn, TxnOp};

use crate::cli::{self, Invocation, Parsed};
use crate::error::{CtlResult, EXIT_BAD_ARGS, EXIT_ERROR, EXIT_INVALID_INPUT, Exit, message, out};
use crate::gofmt;
use crate::help;
use crate::session;

/// A Go panic in etcdctl (exit code 2), as far as it is reproducible.
fn go_panic(what: &str) -> Exit {
    Exit { code: 2, stdout: String::new(), stderr: format!("panic: {what}\n") }
}

/// `etcdctl txn`.
pub async fn txn(mut inv: Invocation) -> CtlResult {
    if !inv.args.is_empty() {
        return Err(Exit::error(EXIT_BAD_ARGS, "txn command does not accept argument"));
    }
    let interactive = inv.flags.bool("interactive");
    // The client is made first (etcdctl's `mustClientFromCmd`), then stdin
    // is read.
    let s = session::connect(&mut inv).await?;
    let txn = tokio::task::spawn_blocking(move || read_txn(&mut std::io::stdin().lock(), interactive))
        .await
        .map_err(|e| Exit::error(EXIT_ERROR, e))??;
    let response = s.logged(s.client.kv().txn(txn).await).map_err(|e| Exit::error(EXIT_ERROR, message(&e)))?;
    s.printer.txn(&response)
}

fn prompt(interactive: bool, text: &str) {
    if interactive {
        out(format!("{text}\n"));
    }
}

/// Reads the three sections of a transaction.
pub fn read_txn(reader: &mut dyn BufRead, interactive: bool) -> Result<Txn, Exit> {
    prompt(interactive, "compares:");
    let compares = read_section(reader, parse_compare)?;
    prompt(interactive, "success requests (get, put, del):");
    let success = read_section(reader, parse_request)?;
    prompt(interactive, "failure requests (get, put, del):");
    let failure = read_section(reader, parse_request)?;
    Ok(Txn::new().when(compares).and_then(success).or_else(failure))
}

/// Lines up to an empty one, each parsed by `parse`. A last line without
/// its newline is Go's `EOF` error.
fn read_section<T>(reader: &mut dyn BufRead, parse: fn(&str) -> Result<T, Exit>) -> Result<Vec<T>, Exit> {
    let mut items = Vec::new();
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(_) if line.last() == Some(&b'\n') => {}
            Ok(_) => return Err(Exit::error(EXIT_INVALID_INPUT, "EOF")),
            Err(e) => return Err(Exit::error(EXIT_INVALID_INPUT, e)),
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim();
        if line.is_empty() {
            return Ok(items);
        }
        items.push(parse(line)?);
    }
}

/// Input being scanned as Go's `fmt.Sscanf` scans it.
struct Scanner<'a> {
    rest: &'a str,
}

impl<'a> Scanner<'a> {
    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t', '\r']);
    }

    /// `%q`: a Go double-quoted or back-quoted string.
    fn quoted(&mut self) -> Result<String, String> {
        self.skip_spaces();
        let mut chars = self.rest.char_indices();
        let Some((_, quote)) = chars.next() else { return Err("unexpected EOF".to_string()) };
        match quote {
            '`' => {
                let body = &self.rest[1..];
                let end = body.find('`').ok_or("unexpected EOF")?;
                self.rest = &body[end + 1..];
                Ok(body[..end].to_string())
            }
            '"' => {
                let mut escaped = false;
                for (i, c) in chars {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        let literal = &self.rest[..=i];
                        self.rest = &self.rest[i + 1..];
                        return unquote(literal).ok_or_else(|| "invalid syntax".to_string());
                    }
                }
                Err("unexpected EOF".to_string())
            }
            _ => Err("expected quoted string".to_string()),
        }
    }

    /// `%s`: a word up to white space.
    fn word(&mut self) -> Result<String, String> {
        self.skip_spaces();
        let end = self.rest.find(char::is_whitespace).unwrap_or(self.rest.len());
        if end == 0 {
            return Err("unexpected EOF".to_string());
        }
        let word = self.rest[..end].to_string();
        self.rest = &self.rest[end..];
        Ok(word)
    }

    /// A space of the format: at least one space in the input, or its end.
    fn space(&mut self) -> Result<(), String> {
        if self.rest.is_empty() {
            return Ok(());
        }
        let before = self.rest.len();
        self.skip_spaces();
        if self.rest.len() == before {
            return Err("input does not match format".to_string());
        }
        Ok(())
    }

    /// A literal character of the format.
    fn literal(&mut self, c: char) -> Result<(), String> {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                Ok(())
            }
            None => Err("input does not match format".to_string()),
        }
    }
}

/// Go's `strconv.Unquote` of a double-quoted literal.
pub fn unquote(literal: &str) -> Option<String> {
    let body = literal.strip_prefix('"')?.strip_suffix('"')?;
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\n' {
            return None;
        }
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let escape = chars.next()?;
        match escape {
            'a' => out.push(7),
            'b' => out.push(8),
            'f' => out.push(12),
            'n' => out.push(b'\n'),
            'r' => out.push(b'\r'),
            't' => out.push(b'\t'),
            'v' => out.push(11),
            '\\' => out.push(b'\\'),
            '"' => out.push(b'"'),
            'x' | 'u' | 'U' => {
                let len = match escape {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let digits: String = (0..len).map(|_| chars.next()).collect::<Option<String>>()?;
                let value = u32::from_str_radix(&digits, 16).ok()?;
                if escape == 'x' {
                    out.push(u8::try_from(value).ok()?);
                } else {
                    let c = char::from_u32(value)?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
            '0'..='7' => {
                let mut value = escape.to_digit(8)?;
                for _ in 0..2 {
                    value = value * 8 + chars.next()?.to_digit(8)?;
                }
                out.push(u8::try_from(value).ok()?);
            }
            _ => return None,
        }
    }
    // Go strings hold any bytes; keys given this way are kept as UTF-8.
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// etcdctl's `parseCompare`: `<target>("<key>") <op> "<value>"`.
pub fn parse_compare(line: &str) -> Result<Compare, Exit> {
    let malformed = || Exit::error(EXIT_INVALID_INPUT, format!("malformed comparison: {line}"));
    let Some((target, rest)) = line.split_once('(') else { return Err(malformed()) };
    let mut scanner = Scanner { rest };
    let (mut key, mut op, mut value) = (String::new(), String::new(), String::new());
    let mut scanned = 0;
    let result: Result<(), String> = (|| {
        key = scanner.quoted()?;
        scanned += 1;
        scanner.literal(')')?;
        scanner.space()?;
        op = scanner.word()?;
        scanned += 1;
        scanner.space()?;
        value = scanner.quoted()?;
        scanned += 1;
        Ok(())
    })();
    if scanned != 3 {
        return Err(Exit::error(
            EXIT_INVALID_INPUT,
            format!(
                "malformed comparison: {line}; got {target}({}) {op} {}",
                gofmt::quote(key.as_bytes()),
                gofmt::quote(value.as_bytes())
            ),
        ));
    }
    if let Err(e) = result {
        return Err(Exit::error(EXIT_INVALID_INPUT, format!("malformed comparison: {line} ({e})")));
    }
    let op = match op.as_str() {
        "=" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        ">" => CompareOp::Greater,
        "<" => CompareOp::Less,
        _ => return Err(go_panic("Unknown result op")),
    };
    let number = || {
        gofmt::parse_int(&value, 10)
            .map_err(|_| Exit::error(EXIT_INVALID_INPUT, format!("invalid txn compare request: {line}")))
    };
    Ok(match target {
        "ver" | "version" => Compare::version(key, op, number()?),
        "c" | "create" => Compare::create_revision(key, op, number()?),
        "m" | "mod" => Compare::mod_revision(key, op, number()?),
        "val" | "value" => Compare::value(key, op, value),
        // etcdctl 3.4 passes the value as a string where clientv3 wants a
        // number, and panics.
        "lease" => return Err(go_panic("bad compare value")),
        _ => {
            return Err(Exit::error(
                EXIT_INVALID_INPUT,
                format!("malformed comparison: {line} (unknown target {target})"),
            ));
        }
    })
}

/// etcdctl's `argify`: words as its regular expression
/// `"(?:[^"\\]|\\.)*"|'[^']*'|[^'"\s]\S*[^'"\s]?` finds them, double-quoted
/// ones unquoted, single-quoted ones cut as etcdctl cuts them (by the
/// number of words, a bug kept for compatibility).
pub fn argify(line: &str) -> Result<Vec<String>, Exit> {
    let bytes = line.as_bytes();
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c);
    let mut words: Vec<String> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let end = match bytes[i] {
            b'"' => {
                let mut j = i + 1;
                let mut end = None;
                while j < bytes.len() {
                    match bytes[j] {
                        b'\\' if j + 1 < bytes.len() && bytes[j + 1] != b'\n' => j += 2,
                        b'\\' => break,
                        b'"' => {
                            end = Some(j + 1);
                            break;
                        }
                        _ => j += 1,
                    }
                }
                end
            }
            b'\'' => line[i + 1..].find('\'').map(|k| i + 1 + k + 1),
            b if is_space(b) => None,
            _ => {
                let mut j = i;
                while j < bytes.len() && !is_space(bytes[j]) {
                    j += 1;
                }
                Some(j)
            }
        };
        match end {
            Some(end) => {
                words.push(line[start..end].to_string());
                i = end;
            }
            None => {
                // No match here: move on by one character.
                i += line[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }
    let count = words.len();
    let mut out = Vec::with_capacity(count);
    for word in words {
        if word.starts_with('\'') {
            // Go: args[i][1 : len(args)-1].
            let end = count.saturating_sub(1);
            if end < 1 || end > word.len() || !word.is_char_boundary(end) {
                return Err(go_panic(&format!("runtime error: slice bounds out of range [1:{end}]")));
            }
            out.push(word[1..end].to_string());
        } else if word.starts_with('"') {
            out.push(unquote(&word).ok_or_else(|| Exit::error(EXIT_INVALID_INPUT, "invalid syntax"))?);
        } else {
            out.push(word);
        }
    }
    Ok(out)
}

/// etcdctl's `parseRequestUnion`: a `get`, `put` or `del` line.
pub fn parse_request(line: &str) -> Result<TxnOp, Exit> {
    let args = argify(line)?;
    if args.len() < 2 {
        return Err(Exit::error(EXIT_INVALID_INPUT, format!("invalid txn compare request: {line}")));
    }
    let invalid = || Exit::error(EXIT_INVALID_INPUT, format!("invalid txn request: {line}"));
    let inv = match cli::parse_local(args) {
        Ok(Parsed::Run(inv)) => inv,
        Ok(Parsed::Help(_)) => return Err(invalid()),
        Err((path, _)) => {
            // cobra prints the request command's usage, then etcdctl its error.
            let mut exit = invalid();
            if let Some((_, usage)) = help::TXN_REQUEST_USAGE.iter().find(|(p, _)| *p == path) {
                exit.stderr = format!("{usage}{}", exit.stderr);
            }
            return Err(exit);
        }
    };
    match inv.path.as_str() {
        "get" => {
            let (key, options) = super::kv::get_op(&inv.arg_bytes, &inv.flags)?;
            Ok(TxnOp::get(key, options))
        }
        "put" => {
            let (key, value, options) = super::kv::put_op(&inv.arg_bytes, &inv.flags, &mut std::io::empty())?;
            Ok(TxnOp::put(key, value, options))
        }
        "del" => {
            let (key, options) = super::kv::del_op(&inv.arg_bytes, &inv.flags)?;
            Ok(TxnOp::delete(key, options))
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_argify() {
        assert_eq!(argify("put k3 v3").ok(), Some(vec!["put".to_string(), "k3".into(), "v3".into()]));
        assert_eq!(
            argify(r#"put "a key" "a\tvalue""#).ok(),
            Some(vec!["put".to_string(), "a key".into(), "a\tvalue".into()])
        );
        // etcdctl's cut of single-quoted words: [1 : number of words - 1].
        assert_eq!(argify("put 'abcdef' x").ok(), Some(vec!["put".to_string(), "a".into(), "x".into()]));
    }

    #[test]
    fn compares_parse_like_etcdctl() {
        let c = parse_compare(r#"mod("k1") > "0""#).ok().map(Compare::into_proto);
        assert_eq!(c.map(|c| (c.key, c.result, c.target)), Some((b"k1".to_vec(), 1, 2)));
        let e = parse_compare(r#"mod("k1")>"0""#).err().map(|e| e.stderr).unwrap_or_default();
        assert_eq!(e, "Error: malformed comparison: mod(\"k1\")>\"0\"; got mod(\"k1\")  \"\"\n");
        let e = parse_compare("nothing").err().map(|e| e.stderr).unwrap_or_default();
        assert_eq!(e, "Error: malformed comparison: nothing\n");
        let e = parse_compare(r#"foo("k") = "1""#).err().map(|e| e.stderr).unwrap_or_default();
        assert_eq!(e, "Error: malformed comparison: foo(\"k\") = \"1\" (unknown target foo)\n");
        let e = parse_compare(r#"ver("k") = "x""#).err().map(|e| e.stderr).unwrap_or_default();
        assert_eq!(e, "Error: invalid txn compare request: ver(\"k\") = \"x\"\n");
    }

    #[test]
    fn transactions_read_three_sections() {
        let input = "value(\"k\") = \"v\"\n\nput k v2\n\nget k\n\n";
        let txn = read_txn(&mut input.as_bytes(), false).ok().map(Txn::into_request);
        assert_eq!(txn.map(|t| (t.compare.len(), t.success.len(), t.failure.len())), Some((1, 1, 1)));
        let e = read_txn(&mut "\n\nget k\n".as_bytes(), false).err().map(|e| (e.code, e.stderr));
        assert_eq!(e, Some((EXIT_INVALID_INPUT, "Error: EOF\n".to_string())));
    }
}
