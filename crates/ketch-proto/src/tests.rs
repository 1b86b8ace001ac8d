use prost::Message;
use prost_types::{FileDescriptorSet, field_descriptor_proto::Type};

use crate::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
};

#[test]
fn range_request_round_trip() {
    let req = RangeRequest {
        key: b"foo".to_vec(),
        range_end: b"fop".to_vec(),
        limit: 10,
        revision: 42,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Mod as i32,
        serializable: true,
        keys_only: true,
        count_only: false,
        min_mod_revision: 1,
        max_mod_revision: 2,
        min_create_revision: 3,
        max_create_revision: 4,
    };
    let bytes = req.encode_to_vec();
    let decoded = RangeRequest::decode(bytes.as_slice()).expect("decode RangeRequest");
    assert_eq!(decoded, req);
    assert_eq!(decoded.sort_order(), SortOrder::Descend);

    // Tag check: key = 1 (length-delimited) => first byte 0x0a.
    assert_eq!(bytes[0], 0x0a);
}

#[test]
fn txn_request_with_nested_ops_round_trip() {
    let inner = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: b"gone".to_vec(),
                range_end: vec![],
                prev_kv: true,
            })),
        }],
        failure: vec![],
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: b"k".to_vec(),
            target_union: Some(TargetUnion::ModRevision(7)),
            range_end: b"l".to_vec(),
        }],
        success: vec![
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v".to_vec(),
                    lease: 99,
                    prev_kv: true,
                    ignore_value: false,
                    ignore_lease: false,
                })),
            },
            RequestOp { request: Some(Request::RequestTxn(inner)) },
        ],
        failure: vec![RequestOp {
            request: Some(Request::RequestRange(RangeRequest { key: b"k".to_vec(), ..Default::default() })),
        }],
    };
    let bytes = txn.encode_to_vec();
    let decoded = TxnRequest::decode(bytes.as_slice()).expect("decode TxnRequest");
    assert_eq!(decoded, txn);
    match &decoded.success[1].request {
        Some(Request::RequestTxn(t)) => assert_eq!(t.success.len(), 1),
        other => panic!("unexpected nested op: {other:?}"),
    }
}

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("decode descriptor set")
}

/// Returns (number, type) of `field` in message `message` (nested messages
/// separated by '.') of protobuf package `package`.
fn field(fds: &FileDescriptorSet, package: &str, message: &str, field: &str) -> (i32, Type) {
    let mut path = message.split('.');
    let top = path.next().unwrap();
    let mut msg = fds
        .file
        .iter()
        .filter(|f| f.package() == package)
        .flat_map(|f| f.message_type.iter())
        .find(|m| m.name() == top)
        .unwrap_or_else(|| panic!("message {package}.{top} not found"));
    for nested in path {
        msg = msg
            .nested_type
            .iter()
            .find(|m| m.name() == nested)
            .unwrap_or_else(|| panic!("nested message {nested} not found"));
    }
    let f = msg
        .field
        .iter()
        .find(|f| f.name() == field)
        .unwrap_or_else(|| panic!("field {package}.{message}.{field} not found"));
    (f.number(), f.r#type())
}

#[test]
fn etcd_field_numbers() {
    let fds = descriptor_set();
    let cases: &[(&str, &str, &str, i32)] = &[
        ("etcdserverpb", "RangeRequest", "max_create_revision", 13),
        ("etcdserverpb", "Compare", "range_end", 64),
        ("etcdserverpb", "Compare", "lease", 8),
        ("etcdserverpb", "WatchCreateRequest", "fragment", 8),
        ("etcdserverpb", "WatchCreateRequest", "watch_id", 7),
        ("etcdserverpb", "WatchResponse", "events", 11),
        ("etcdserverpb", "WatchResponse", "cancel_reason", 6),
        ("etcdserverpb", "StatusResponse", "isLearner", 10),
        ("etcdserverpb", "ResponseHeader", "raft_term", 4),
        ("etcdserverpb", "PutRequest", "ignore_lease", 6),
        ("etcdserverpb", "Member", "isLearner", 5),
        ("etcdserverpb", "MemberListRequest", "linearizable", 1),
        ("etcdserverpb", "LeaseCheckpoint", "remaining_TTL", 2),
        ("etcdserverpb", "InternalRaftRequest", "header", 100),
        ("etcdserverpb", "InternalRaftRequest", "lease_checkpoint", 11),
        ("etcdserverpb", "InternalRaftRequest", "auth_disable", 1011),
        ("etcdserverpb", "InternalRaftRequest", "auth_role_revoke_permission", 1204),
        ("mvccpb", "KeyValue", "lease", 6),
        ("mvccpb", "Event", "prev_kv", 3),
        ("authpb", "User", "options", 4),
        ("v3electionpb", "LeaderKey", "lease", 4),
        ("v3lockpb", "LockResponse", "key", 2),
    ];
    for &(pkg, msg, name, number) in cases {
        assert_eq!(field(&fds, pkg, msg, name).0, number, "{pkg}.{msg}.{name}");
    }
    assert_eq!(field(&fds, "etcdserverpb", "RangeRequest", "max_create_revision").1, Type::Int64);
    assert_eq!(field(&fds, "etcdserverpb", "ResponseHeader", "raft_term").1, Type::Uint64);
}

#[test]
fn etcd_services_present() {
    let fds = descriptor_set();
    let services: Vec<String> =
        fds.file.iter().flat_map(|f| f.service.iter().map(move |s| format!("{}.{}", f.package(), s.name()))).collect();
    for expected in [
        "etcdserverpb.KV",
        "etcdserverpb.Watch",
        "etcdserverpb.Lease",
        "etcdserverpb.Cluster",
        "etcdserverpb.Maintenance",
        "etcdserverpb.Auth",
        "v3lockpb.Lock",
        "v3electionpb.Election",
    ] {
        assert!(services.iter().any(|s| s == expected), "missing {expected}");
    }
}
