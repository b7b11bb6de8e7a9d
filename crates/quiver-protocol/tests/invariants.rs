//! Property tests: the parsers keep `quiver_protocol::invariants` for generated inputs, both
//! arbitrary bytes and inputs shaped like real commands (near-valid names, every field), so
//! most cases reach the checks past the first parse. The `cargo fuzz` targets in `fuzz/`
//! explore the same properties with coverage guidance.

use std::collections::HashMap;

use proptest::prelude::*;
use prost::Message;
use quiver_protocol::invariants;
use quiver_protocol::protocol::pb;

/// Names near the valid alphabet, with the characters that must be refused mixed in.
const NAME: &str = "[a-zA-Z0-9_.:+=|/\\\\-]{0,12}";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn json_partition() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        NAME.prop_map(serde_json::Value::from),
        prop::collection::btree_map(NAME, NAME, 0..3)
            .prop_map(|m| serde_json::to_value(m).unwrap()),
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
    ]
}

fn pb_partition() -> impl Strategy<Value = pb::Partition> {
    prop_oneof![
        NAME.prop_map(|key| pb::Partition {
            kind: Some(pb::partition::Kind::Key(key)),
        }),
        prop::collection::hash_map(NAME, NAME, 0..3).prop_map(|keys: HashMap<_, _>| {
            pb::Partition {
                kind: Some(pb::partition::Kind::Dimensions(pb::Dimensions { keys })),
            }
        }),
        Just(pb::Partition { kind: None }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        invariants::command(&data);
        invariants::path(&data);
        invariants::ticket(&data);
        invariants::criteria(&data);
        invariants::action_body(&data);
        invariants::names(&data);
    }

    #[test]
    fn json_commands(
        target in NAME,
        asset in prop_oneof![NAME.prop_map(serde_json::Value::from),
                             prop::collection::vec(NAME, 0..4).prop_map(serde_json::Value::from)],
        mode in prop_oneof![Just("overwrite"), Just("append"), Just("upsert"), Just("merge")],
        partition in json_partition(),
        key in prop::collection::vec(NAME, 0..3),
        columns in prop::option::of(prop::collection::vec(NAME, 0..3)),
        version in prop::option::of(any::<u64>()),
    ) {
        let command = serde_json::json!({
            "target": target, "asset": asset, "mode": mode, "partition": partition, "key": key,
        });
        let command = serde_json::to_vec(&command).unwrap();
        invariants::command(&command);
        invariants::action_body(&command);
        let ticket = serde_json::json!({
            "target": target, "asset": asset, "partition": partition, "columns": columns,
            "version": version,
        });
        invariants::ticket(&serde_json::to_vec(&ticket).unwrap());
        let criteria = serde_json::json!({"target": target, "prefix": asset});
        invariants::criteria(&serde_json::to_vec(&criteria).unwrap());
    }

    #[test]
    fn protobuf_commands(
        target in NAME,
        asset in prop::collection::vec(NAME, 0..4),
        mode in -1i32..5,
        partition in prop::option::of(pb_partition()),
        partitions in prop::collection::vec(pb_partition(), 0..3),
        partition_column in prop::option::of(NAME),
        partition_columns in prop::collection::hash_map(NAME, NAME, 0..2),
        key in prop::collection::vec(NAME, 0..3),
        columns in prop::collection::vec(NAME, 0..3),
        version in prop::option::of(any::<u64>()),
    ) {
        let command = pb::AssetCommand {
            target: target.clone(),
            asset: asset.clone(),
            mode,
            partition,
            partition_column,
            key,
            idempotency_key: None,
            options: HashMap::new(),
            partition_columns,
        };
        invariants::command(&command.encode_to_vec());
        let ticket = pb::AssetTicket { target, asset, partitions, columns, version };
        invariants::ticket(&ticket.encode_to_vec());
    }

    /// One field of a command, ticket or action body given a value of up to tens of kilobytes,
    /// of characters valid and not, quotes among them.
    #[test]
    fn long_values(
        field in prop::sample::select(vec![
            "target", "asset", "mode", "partition", "key", "partition_column",
            "idempotency_key", "columns", "an unknown field",
        ]),
        unit in "[a-z.:é/=|\"`\\\\-]{1,3}",
        repeat in 1usize..8_000,
        as_key in any::<bool>(),
    ) {
        let long = unit.repeat(repeat);
        let mut body = serde_json::json!({
            "target": "parquet", "asset": "a", "partition": {"d": "k"}, "key": ["id"],
        });
        let value = if as_key {
            serde_json::json!({ long.clone(): "x" })
        } else {
            serde_json::Value::from(long.clone())
        };
        if field == "an unknown field" {
            body[long.as_str()] = value;
        } else {
            body[field] = value;
        }
        let body = serde_json::to_vec(&body).unwrap();
        invariants::command(&body);
        invariants::ticket(&body);
        invariants::action_body(&body);
        invariants::criteria(&body);
        invariants::names(long.as_bytes());
        invariants::path(long.as_bytes());
    }

    #[test]
    fn names(name in "[a-zA-Z0-9_.:+=|/\\\\-]{0,40}") {
        invariants::names(name.as_bytes());
        invariants::path(name.replace('/', "\0").as_bytes());
    }
}
