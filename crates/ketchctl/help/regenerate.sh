#!/usr/bin/env bash
# Regenerates the help texts from the reference etcdctl 3.4.23: ketchctl prints
# etcdctl's own usage text (on `--help`, `help <command>` and usage errors), so
# that scripts and people see exactly what etcdctl shows.
#
# Each `<command path with _>.txt` holds what `etcdctl <command> --help` prints;
# `root.txt` is `etcdctl --help`.
set -euo pipefail
cd "$(dirname "$0")"
export ETCDCTL_API=3
etcdctl --help > root.txt
commands=(alarm "alarm disarm" "alarm list" auth "auth disable" "auth enable" check "check datascale"
  "check perf" compaction completion "completion bash" "completion fish" "completion powershell"
  "completion zsh" defrag del elect endpoint "endpoint hashkv" "endpoint health" "endpoint status" get help
  lease "lease grant" "lease keep-alive" "lease list" "lease revoke" "lease timetolive" lock make-mirror
  member "member add" "member list" "member promote" "member remove" "member update" migrate move-leader
  put role "role add" "role delete" "role get" "role grant-permission" "role list" "role revoke-permission"
  snapshot "snapshot restore" "snapshot save" "snapshot status" txn user "user add" "user delete" "user get"
  "user grant-role" "user list" "user passwd" "user revoke-role" version watch)
for c in "${commands[@]}"; do
  # shellcheck disable=SC2086
  etcdctl $c --help > "${c// /_}.txt"
done

# The usage cobra prints (on stderr) when a request line of `txn` has a bad
# flag: cobra's default template, not etcdctl's.
for c in get put del; do
  printf '\n%s k --bogus\n\n\n' "$c" | etcdctl txn 2> "txn_$c.txt" > /dev/null || true
  sed -i '$d' "txn_$c.txt"
done
