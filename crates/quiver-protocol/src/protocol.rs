//! The wire contract: Flight descriptors, tickets, list criteria and action bodies, in their
//! JSON and protobuf forms (see `docs/protocol.md`).

use std::collections::BTreeMap;
use std::fmt;

use arrow_flight::FlightDescriptor;
use arrow_flight::flight_descriptor::DescriptorType;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::asset::{AssetKey, Partition, PartitionColumns};
use crate::error::{Error, Result, echo, echo_in, echo_list};

/// The protobuf messages of `proto/quiver/v1/quiver.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/quiver.v1.rs"));
}

/// The encoded `FileDescriptorSet` of `quiver.v1` and `arrow.flight.protocol` (with the
/// well-known types they import), served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// How a put combines with what the asset already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Overwrite,
    Append,
    Upsert,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Overwrite, Mode::Append, Mode::Upsert];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Overwrite => "overwrite",
            Self::Append => "append",
            Self::Upsert => "upsert",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Target-specific options of a put, e.g. `{"compression": "zstd"}`.
pub type Options = BTreeMap<String, serde_json::Value>;

/// A parsed DoPut / GetFlightInfo / GetSchema descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetCommand {
    pub target: String,
    pub asset: AssetKey,
    pub mode: Mode,
    pub partition: Option<Partition>,
    pub partition_column: Option<PartitionColumns>,
    pub key: Vec<String>,
    pub idempotency_key: Option<String>,
    pub options: Options,
}

/// A parsed DoGet ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetTicket {
    pub target: Option<String>,
    pub asset: AssetKey,
    /// Empty: the whole asset.
    pub partitions: Vec<Partition>,
    pub columns: Option<Vec<String>>,
    pub version: Option<u64>,
}

/// Parsed ListFlights criteria.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListCriteria {
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
}

/// The body of the `delete` and `describe` actions.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetAction {
    pub target: String,
    pub asset: AssetKey,
    pub partition: Option<Partition>,
}

/// The JSON summary returned in the `app_metadata` of a DoPut's PutResult.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutSummary {
    pub asset: String,
    pub target: String,
    pub mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<serde_json::Value>,
    pub rows: u64,
    pub bytes: u64,
    pub location: String,
    pub version: u64,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// True when this answer repeats an earlier put with the same idempotency key.
    pub replayed: bool,
}

/// An asset key in JSON: `"sales/daily"` or `["sales", "daily"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonAsset {
    Path(String),
    Segments(Vec<String>),
}

impl JsonAsset {
    fn into_key(self) -> Result<AssetKey> {
        match self {
            Self::Path(p) => AssetKey::parse(&p),
            Self::Segments(s) => AssetKey::new(&s),
        }
    }
}

/// A partition in JSON: `"2024-01-01"` or `{"date": "2024-01-01", "region": "eu"}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonPartition {
    Single(String),
    Multi(BTreeMap<String, String>),
}

impl JsonPartition {
    fn into_partition(self) -> Result<Partition> {
        match self {
            Self::Single(key) => Partition::single(key),
            Self::Multi(dims) => Partition::multi(dims),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonPartitions {
    One(JsonPartition),
    Many(Vec<JsonPartition>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCommand {
    target: String,
    asset: JsonAsset,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    partition: Option<JsonPartition>,
    #[serde(default)]
    partition_column: Option<PartitionColumns>,
    #[serde(default)]
    key: Vec<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    options: Options,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTicket {
    #[serde(default)]
    target: Option<String>,
    asset: JsonAsset,
    #[serde(default)]
    partition: Option<JsonPartitions>,
    #[serde(default)]
    partitions: Option<Vec<JsonPartition>>,
    #[serde(default)]
    columns: Option<Vec<String>>,
    #[serde(default)]
    version: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonAction {
    target: String,
    asset: JsonAsset,
    #[serde(default)]
    partition: Option<JsonPartition>,
}

const COMMAND_HELP: &str = "expected a JSON object like {\"target\": \"parquet\", \"asset\": \"sales/daily\"} \
     or a protobuf quiver.v1.AssetCommand (see docs/protocol.md)";

/// Parses a Flight descriptor naming an asset (PATH or CMD form).
pub fn parse_descriptor(descriptor: &FlightDescriptor) -> Result<AssetCommand> {
    match descriptor.r#type() {
        DescriptorType::Path => {
            let Some((target, asset)) = descriptor.path.split_first() else {
                return Err(Error::invalid_request(
                    "the descriptor path is empty; use [target, segment, ...], e.g. [\"parquet\", \"sales\", \"daily\"]",
                ));
            };
            if asset.is_empty() {
                return Err(Error::invalid_request(format!(
                    "the descriptor path names target '{}' but no asset; use [target, segment, ...], e.g. [\"parquet\", \"sales\", \"daily\"]",
                    echo(target)
                )));
            }
            Ok(AssetCommand {
                target: check_target_name(target)?,
                asset: AssetKey::new(asset)?,
                mode: Mode::Overwrite,
                partition: None,
                partition_column: None,
                key: Vec::new(),
                idempotency_key: None,
                options: Options::new(),
            })
        }
        DescriptorType::Cmd => parse_command(&descriptor.cmd),
        DescriptorType::Unknown => Err(Error::invalid_request(
            "the descriptor type is UNKNOWN; send a PATH or CMD descriptor",
        )),
    }
}

/// Parses a CMD descriptor body: JSON when it starts with `{`, else protobuf.
pub fn parse_command(cmd: &[u8]) -> Result<AssetCommand> {
    if cmd.first() == Some(&b'{') {
        let json: JsonCommand = serde_json::from_slice(cmd).map_err(|e| {
            Error::invalid_request(format!(
                "the descriptor command is not valid: {}; {COMMAND_HELP}",
                echo_in(&e.to_string())
            ))
        })?;
        let partition = json
            .partition
            .map(JsonPartition::into_partition)
            .transpose()?;
        return finish_command(AssetCommand {
            target: check_target_name(&json.target)?,
            asset: json.asset.into_key()?,
            mode: json.mode,
            partition,
            partition_column: json.partition_column,
            key: json.key,
            idempotency_key: json.idempotency_key,
            options: json.options,
        });
    }
    let pb = pb::AssetCommand::decode(cmd).map_err(|e| {
        Error::invalid_request(format!(
            "the descriptor command is neither JSON nor a protobuf quiver.v1.AssetCommand ({e}); {COMMAND_HELP}"
        ))
    })?;
    let mode = match pb::Mode::try_from(pb.mode) {
        Ok(pb::Mode::Unspecified | pb::Mode::Overwrite) => Mode::Overwrite,
        Ok(pb::Mode::Append) => Mode::Append,
        Ok(pb::Mode::Upsert) => Mode::Upsert,
        Err(_) => {
            return Err(Error::invalid_request(format!(
                "unknown mode {} in quiver.v1.AssetCommand; use MODE_OVERWRITE, MODE_APPEND or MODE_UPSERT",
                pb.mode
            )));
        }
    };
    finish_command(AssetCommand {
        target: check_target_name(&pb.target)?,
        asset: AssetKey::new(&pb.asset)?,
        mode,
        partition: pb.partition.map(partition_from_pb).transpose()?,
        partition_column: match (pb.partition_column, pb.partition_columns.is_empty()) {
            (Some(column), true) => Some(PartitionColumns::Single(column)),
            (None, false) => Some(PartitionColumns::PerDimension(
                pb.partition_columns.into_iter().collect(),
            )),
            (None, true) => None,
            (Some(_), false) => {
                return Err(Error::invalid_request(
                    "quiver.v1.AssetCommand sets both partition_column and partition_columns; set one",
                ));
            }
        },
        key: pb.key,
        idempotency_key: pb.idempotency_key,
        options: pb
            .options
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
    })
}

fn finish_command(cmd: AssetCommand) -> Result<AssetCommand> {
    if cmd.mode == Mode::Upsert && cmd.key.is_empty() {
        return Err(Error::invalid_request(format!(
            "mode 'upsert' for asset '{}' needs \"key\": the columns that identify a row, e.g. [\"id\"]",
            cmd.asset
        )));
    }
    if let Some(columns) = &cmd.partition_column {
        match &cmd.partition {
            None => {
                return Err(Error::invalid_request(format!(
                    "\"partition_column\" {:?} is set but no \"partition\" is given for asset '{}'",
                    echo_list(columns.columns()),
                    cmd.asset
                )));
            }
            Some(partition) => columns.check(partition)?,
        }
    }
    if let Some(key) = &cmd.idempotency_key
        && (key.is_empty() || key.len() > 256)
    {
        return Err(Error::invalid_request(
            "\"idempotency_key\" must be between 1 and 256 bytes long",
        ));
    }
    Ok(cmd)
}

fn partition_from_pb(p: pb::Partition) -> Result<Partition> {
    match p.kind {
        Some(pb::partition::Kind::Key(key)) => Partition::single(key),
        Some(pb::partition::Kind::Dimensions(d)) => Partition::multi(d.keys.into_iter().collect()),
        None => Err(Error::invalid_request(
            "a quiver.v1.Partition sets neither key nor dimensions",
        )),
    }
}

fn partition_to_pb(p: &Partition) -> pb::Partition {
    let kind = match p {
        Partition::Single(key) => pb::partition::Kind::Key(key.clone()),
        Partition::Multi(dims) => pb::partition::Kind::Dimensions(pb::Dimensions {
            keys: dims.clone().into_iter().collect(),
        }),
    };
    pb::Partition { kind: Some(kind) }
}

/// Target names: `[A-Za-z0-9_-]`, 1 to 64 bytes.
pub fn check_target_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(name.to_string())
    } else {
        Err(Error::invalid_request(format!(
            "target name {:?} is not valid; target names use 1 to 64 of [A-Za-z0-9_-]",
            echo(name)
        )))
    }
}

const TICKET_HELP: &str = "expected the ticket from GetFlightInfo, a JSON object like \
     {\"target\": \"parquet\", \"asset\": \"sales/daily\"}, or a protobuf quiver.v1.AssetTicket";

/// Parses a DoGet ticket: JSON when it starts with `{`, else protobuf.
pub fn parse_ticket(ticket: &[u8]) -> Result<AssetTicket> {
    if ticket.first() == Some(&b'{') {
        let json: JsonTicket = serde_json::from_slice(ticket).map_err(|e| {
            Error::invalid_request(format!(
                "the ticket is not valid: {}; {TICKET_HELP}",
                echo_in(&e.to_string())
            ))
        })?;
        let mut partitions = Vec::new();
        match json.partition {
            Some(JsonPartitions::One(p)) => partitions.push(p.into_partition()?),
            Some(JsonPartitions::Many(ps)) => {
                for p in ps {
                    partitions.push(p.into_partition()?);
                }
            }
            None => {}
        }
        for p in json.partitions.unwrap_or_default() {
            partitions.push(p.into_partition()?);
        }
        if json.columns.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::invalid_request(
                "the ticket's \"columns\" is empty; list the columns to read, or leave it out to read them all",
            ));
        }
        return Ok(AssetTicket {
            target: json.target.as_deref().map(check_target_name).transpose()?,
            asset: json.asset.into_key()?,
            partitions,
            columns: json.columns,
            version: json.version,
        });
    }
    let pb = pb::AssetTicket::decode(ticket).map_err(|e| {
        Error::invalid_request(format!(
            "the ticket is neither JSON nor a protobuf quiver.v1.AssetTicket ({e}); {TICKET_HELP}"
        ))
    })?;
    Ok(AssetTicket {
        target: (!pb.target.is_empty())
            .then(|| check_target_name(&pb.target))
            .transpose()?,
        asset: AssetKey::new(&pb.asset)?,
        partitions: pb
            .partitions
            .into_iter()
            .map(partition_from_pb)
            .collect::<Result<_>>()?,
        columns: (!pb.columns.is_empty()).then_some(pb.columns),
        version: pb.version,
    })
}

/// Encodes the opaque ticket GetFlightInfo hands out.
pub fn encode_ticket(ticket: &AssetTicket) -> Vec<u8> {
    pb::AssetTicket {
        target: ticket.target.clone().unwrap_or_default(),
        asset: ticket.asset.segments().to_vec(),
        partitions: ticket.partitions.iter().map(partition_to_pb).collect(),
        columns: ticket.columns.clone().unwrap_or_default(),
        version: ticket.version,
    }
    .encode_to_vec()
}

/// Encodes a descriptor naming an asset in PATH form.
pub fn path_descriptor(target: &str, asset: &AssetKey) -> FlightDescriptor {
    let mut path = vec![target.to_string()];
    path.extend(asset.segments().iter().cloned());
    FlightDescriptor::new_path(path)
}

/// Parses ListFlights criteria: empty, JSON, or protobuf `quiver.v1.ListCriteria`.
pub fn parse_criteria(expression: &[u8]) -> Result<ListCriteria> {
    if expression.is_empty() {
        return Ok(ListCriteria::default());
    }
    let criteria = if expression.first() == Some(&b'{') {
        serde_json::from_slice(expression).map_err(|e| {
            Error::invalid_request(format!(
                "the ListFlights criteria are not valid: {}; expected empty criteria or JSON like {{\"target\": \"parquet\", \"prefix\": \"sales/\"}}",
                echo_in(&e.to_string())
            ))
        })?
    } else {
        let pb = pb::ListCriteria::decode(expression).map_err(|e| {
            Error::invalid_request(format!(
                "the ListFlights criteria are neither JSON nor a protobuf quiver.v1.ListCriteria ({e})"
            ))
        })?;
        ListCriteria {
            target: pb.target,
            prefix: pb.prefix,
        }
    };
    if let Some(target) = &criteria.target {
        check_target_name(target)?;
    }
    Ok(criteria)
}

/// Parses the JSON body of the `delete` and `describe` actions.
pub fn parse_asset_action(action: &str, body: &[u8]) -> Result<AssetAction> {
    let json: JsonAction = serde_json::from_slice(body).map_err(|e| {
        Error::invalid_request(format!(
            "the body of action '{}' is not valid: {}; expected JSON like {{\"target\": \"parquet\", \"asset\": \"sales/daily\"}}",
            echo(action),
            echo_in(&e.to_string())
        ))
    })?;
    Ok(AssetAction {
        target: check_target_name(&json.target)?,
        asset: json.asset.into_key()?,
        partition: json
            .partition
            .map(JsonPartition::into_partition)
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn path_descriptor_names_target_and_asset() {
        let d = FlightDescriptor::new_path(vec!["parquet".into(), "sales".into(), "daily".into()]);
        let cmd = parse_descriptor(&d).unwrap();
        assert_eq!(cmd.target, "parquet");
        assert_eq!(cmd.asset.to_string(), "sales/daily");
        assert_eq!(cmd.mode, Mode::Overwrite);
        assert!(cmd.partition.is_none());
    }

    #[test]
    fn path_descriptor_without_asset_is_refused() {
        let d = FlightDescriptor::new_path(vec!["parquet".into()]);
        let err = parse_descriptor(&d).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.to_string().contains("no asset"), "{err}");
    }

    #[test]
    fn json_and_protobuf_commands_are_equivalent() {
        let json = br#"{"target": "duckdb", "asset": ["analytics", "orders"], "mode": "upsert",
            "partition": {"date": "2024-01-01", "region": "eu"},
            "partition_column": {"date": "day", "region": "region"},
            "key": ["id"], "idempotency_key": "run-1", "options": {"compression": "zstd"}}"#;
        let from_json = parse_command(json).unwrap();
        let pb = pb::AssetCommand {
            target: "duckdb".into(),
            asset: vec!["analytics/orders".into()],
            mode: pb::Mode::Upsert as i32,
            partition: Some(partition_to_pb(from_json.partition.as_ref().unwrap())),
            partition_column: None,
            partition_columns: [
                ("date".to_string(), "day".to_string()),
                ("region".to_string(), "region".to_string()),
            ]
            .into(),
            key: vec!["id".into()],
            idempotency_key: Some("run-1".into()),
            options: [("compression".to_string(), "zstd".to_string())].into(),
        };
        let from_pb = parse_command(&pb.encode_to_vec()).unwrap();
        assert_eq!(from_json, from_pb);
        assert_eq!(from_json.asset.to_string(), "analytics/orders");
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        let cases: [(&[u8], &str); 6] = [
            (b"{not json", "not valid"),
            (br#"{"target": "parquet"}"#, "missing field `asset`"),
            (
                br#"{"target": "parquet", "asset": "a", "colour": 1}"#,
                "unknown field `colour`",
            ),
            (
                br#"{"target": "parquet", "asset": "a", "mode": "merge"}"#,
                "unknown variant `merge`",
            ),
            (
                br#"{"target": "parquet", "asset": "a", "mode": "upsert"}"#,
                "needs \"key\"",
            ),
            (
                br#"{"target": "parquet", "asset": "../etc"}"#,
                "starting with '.'",
            ),
        ];
        for (body, expected) in cases {
            let err = parse_command(body).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.to_string().contains(expected), "{err}");
        }
        let err = parse_command(&[0xff, 0x01, 0x02]).unwrap_err();
        assert!(
            err.to_string().contains("neither JSON nor a protobuf"),
            "{err}"
        );
    }

    /// Whatever its size, a value the client sent comes back as its start and its length.
    #[test]
    fn long_values_are_echoed_by_their_start() {
        for size in [10_000, 1 << 20] {
            let long = "v".repeat(size);
            let commands = [
                json!({"target": long, "asset": "a"}),
                json!({"target": "parquet", "asset": "a", "partition": long}),
                json!({"target": "parquet", "asset": "a", "partition": {"day": long}}),
                json!({"target": "parquet", "asset": "a", "partition": {long.clone(): "x"}}),
                json!({"target": "parquet", "asset": "a", "mode": long}),
                json!({"target": "parquet", "asset": "a", long.clone(): 1}),
                json!({"target": "parquet", "asset": "a", "key": long}),
                json!({"target": "parquet", "asset": "a", "partition_column": long}),
                json!({"target": "parquet", "asset": "a", "partition": {"d": "k"},
                       "partition_column": long}),
                json!({"target": "parquet", "asset": "a", "partition": {"d": "k"},
                       "partition_column": {long.clone(): "c"}}),
                json!({"target": "parquet", "asset": long}),
                json!({"target": "parquet", "asset": [long]}),
                json!({"target": "parquet", "asset": vec!["a"; size / 2].join("/")}),
            ];
            for command in commands {
                let err = parse_command(command.to_string().as_bytes()).unwrap_err();
                let message = err.to_string();
                assert_eq!(err.code(), tonic::Code::InvalidArgument, "{message}");
                assert!(message.len() < 700, "{size}: {message}");
                assert!(message.contains(" bytes"), "{message}");
            }
            let path = FlightDescriptor::new_path(vec![long.clone()]);
            let message = parse_descriptor(&path).unwrap_err().to_string();
            assert!(message.len() < 300, "{message}");
            for ticket in [
                json!({"asset": "a", long.clone(): 1}),
                json!({"asset": "a", "partition": [long]}),
            ] {
                let message = parse_ticket(ticket.to_string().as_bytes())
                    .unwrap_err()
                    .to_string();
                assert!(message.len() < 700, "{message}");
            }
            let criteria = json!({ "target": long }).to_string();
            assert!(
                parse_criteria(criteria.as_bytes())
                    .unwrap_err()
                    .to_string()
                    .len()
                    < 300
            );
            let body = json!({"target": "parquet", "asset": "a", "partition": long}).to_string();
            let message = parse_asset_action(&long, body.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(message.len() < 300, "{message}");
            let message = parse_asset_action(&long, long.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(message.len() < 500, "{message}");
        }
    }

    #[test]
    fn tickets_round_trip_through_the_opaque_encoding() {
        let ticket = parse_ticket(
            br#"{"target": "parquet", "asset": "a/b", "partition": ["2024-01-01", "2024-01-02"],
                "columns": ["x"], "version": 3}"#,
        )
        .unwrap();
        assert_eq!(ticket.partitions.len(), 2);
        assert_eq!(parse_ticket(&encode_ticket(&ticket)).unwrap(), ticket);
        let bare = parse_ticket(br#"{"asset": "a"}"#).unwrap();
        assert_eq!(bare.target, None);
        assert_eq!(parse_ticket(&encode_ticket(&bare)).unwrap(), bare);
    }

    #[test]
    fn criteria_forms() {
        assert_eq!(parse_criteria(b"").unwrap(), ListCriteria::default());
        let c = parse_criteria(br#"{"target": "csv", "prefix": "sales/"}"#).unwrap();
        assert_eq!(c.target.as_deref(), Some("csv"));
        let pb = pb::ListCriteria {
            target: Some("csv".into()),
            prefix: Some("sales/".into()),
        };
        assert_eq!(parse_criteria(&pb.encode_to_vec()).unwrap(), c);
        assert!(parse_criteria(br#"{"targte": "csv"}"#).is_err());
    }
}
