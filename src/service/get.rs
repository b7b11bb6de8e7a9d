//! DoGet and the calls that describe an asset before it is read: GetFlightInfo and
//! ListFlights.

use std::sync::{Arc, OnceLock};

use arrow_array::RecordBatch;
use arrow_flight::{FlightEndpoint, FlightInfo, Ticket};
use arrow_schema::SchemaRef;
use futures::StreamExt;
use tonic::{Request, Status};
use tracing::Span;

use super::records::{describe_record, field_summary};
use super::{Inner, QuiverService};
use crate::asset::{AssetKey, Partition};
use crate::auth::{Access, Principal};
use crate::catalog::AssetRecord;
use crate::error::{Error, Result, echo};
use crate::metrics::status_label;
use crate::protocol::{self, AssetCommand, AssetTicket, ListCriteria};
use crate::targets::{ReadRequest, SendableBatchStream};
use crate::wire::get_encode::{self, IpcMessage};

impl QuiverService {
    /// DoGet's work: the asset's Arrow IPC messages, whose bodies share the read batches'
    /// buffers. The server frames them itself (see `server::routes`); the `FlightService`
    /// method copies each into one `FlightData`.
    #[tracing::instrument(skip_all, fields(target, asset))]
    pub async fn read(
        &self,
        request: Request<Ticket>,
    ) -> Result<futures::stream::BoxStream<'static, Result<IpcMessage>>, Status> {
        let caller = self.inner.auth.authenticate(request.metadata())?;
        let ticket = request.into_inner().ticket;
        if let Some(command) = super::sql::command(&ticket) {
            let (schema, batches) = self.inner.sql_read(&caller, command?).await?;
            return Ok(get_encode::encode(schema, batches));
        }
        let ticket = protocol::parse_ticket(&ticket)?;
        let seen = OnceLock::new();
        let opened = self.inner.open(ticket, &caller, &seen).await;
        self.inner.metrics.get_opened(
            seen.get().map_or("unknown", String::as_str),
            status_label(&opened),
        );
        let (schema, batches) = opened?;
        // Dictionaries are sent as dictionaries: a read returns exactly the types written.
        Ok(get_encode::encode(schema, batches))
    }
}

impl Inner {
    /// Opens an asset for DoGet (and for a SQL query's table).
    pub(super) async fn open(
        &self,
        ticket: AssetTicket,
        caller: &Principal,
        seen: &OnceLock<String>,
    ) -> Result<(SchemaRef, SendableBatchStream)> {
        let target_name = self
            .resolve_target(ticket.target.as_deref(), &ticket.asset)
            .await?;
        caller.check(Access::Read, &target_name, &ticket.asset)?;
        Span::current().record("target", target_name.as_str());
        Span::current().record("asset", ticket.asset.to_string());
        let target = Arc::clone(self.targets.get(&target_name)?);
        let _ = seen.set(target_name.clone());
        let lock = self.locks.get(&target_name, &ticket.asset);
        let _visible = lock.visible.read().await;
        let record = self.record(&target_name, &ticket.asset).await?;
        if let Some(version) = ticket.version
            && version != record.version
        {
            return Err(Error::failed_precondition(format!(
                "the ticket is for version {version} of asset '{}' in target '{target_name}', \
                 but the current version is {}; get a new ticket with GetFlightInfo",
                ticket.asset, record.version
            )));
        }
        let partitions = select_partitions(&record, &ticket.partitions)?;
        let projection = match &ticket.columns {
            None => None,
            Some(columns) => Some(project(&record, columns)?),
        };
        let schema = match &projection {
            Some(indices) => Arc::new(
                record
                    .schema
                    .project(indices)
                    .map_err(|e| Error::internal(e.to_string()))?,
            ),
            None => Arc::clone(&record.schema),
        };
        let batches = target
            .read(&ReadRequest {
                asset: ticket.asset.clone(),
                schema: Arc::clone(&record.schema),
                partitions,
                projection,
                partition_columns: record.partition_columns.clone(),
            })
            .await?;
        // Batches carry exactly the recorded schema, metadata included, whatever the reader
        // attached to them.
        let exact = Arc::clone(&schema);
        let metrics = Arc::clone(&self.metrics);
        let stream = batches.map(move |batch| {
            let batch = batch?;
            metrics.batch_read(
                &target_name,
                batch.num_rows() as u64,
                batch.get_array_memory_size() as u64,
            );
            RecordBatch::try_new(Arc::clone(&exact), batch.columns().to_vec()).map_err(|e| {
                Error::internal(format!(
                    "a stored batch does not match the catalog schema: {e}"
                ))
            })
        });
        Ok((schema, Box::pin(stream)))
    }

    pub(super) async fn record(&self, target: &str, asset: &AssetKey) -> Result<AssetRecord> {
        self.catalog
            .get(target, asset)
            .await?
            .ok_or_else(|| Error::AssetNotFound {
                target: target.to_string(),
                asset: asset.to_string(),
                partition: None,
            })
    }

    /// The target a ticket means: the one it names, or the only one holding the asset.
    async fn resolve_target(&self, target: Option<&str>, asset: &AssetKey) -> Result<String> {
        if let Some(target) = target {
            return Ok(target.to_string());
        }
        let name = asset.to_string();
        let holders: Vec<String> = self
            .catalog
            .list(None, Some(&name))
            .await?
            .into_iter()
            .filter(|r| r.asset == *asset)
            .map(|r| r.target)
            .collect();
        match holders.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::AssetNotFound {
                target: "any".to_string(),
                asset: name,
                partition: None,
            }),
            many => Err(Error::invalid_request(format!(
                "asset '{name}' exists in targets {}; name one with \"target\"",
                many.join(", ")
            ))),
        }
    }

    fn flight_info(&self, record: &AssetRecord, partitions: Vec<Partition>) -> Result<FlightInfo> {
        let (rows, bytes) = if partitions.is_empty() {
            (record.rows, record.bytes)
        } else {
            record
                .partitions
                .iter()
                .filter(|p| partitions.contains(&p.partition))
                .fold((0, 0), |(r, b), p| (r + p.rows, b + p.bytes))
        };
        let ticket = protocol::encode_ticket(&AssetTicket {
            target: Some(record.target.clone()),
            asset: record.asset.clone(),
            partitions,
            columns: None,
            version: Some(record.version),
        });
        let kind = self
            .targets
            .get(&record.target)
            .map(|t| t.kind())
            .unwrap_or("unconfigured");
        FlightInfo::new()
            .try_with_schema(&record.schema)
            .map_err(|e| Error::internal(format!("encoding a schema: {e}")))
            .map(|info| {
                info.with_descriptor(protocol::path_descriptor(&record.target, &record.asset))
                    .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                    .with_total_records(rows as i64)
                    .with_total_bytes(bytes as i64)
                    .with_ordered(true)
                    .with_app_metadata(describe_record(record, kind).to_string())
            })
    }

    /// ListFlights' work: the FlightInfo of every asset the criteria select that `caller` may
    /// read.
    pub(super) async fn list_flights(
        &self,
        caller: &Principal,
        criteria: &ListCriteria,
    ) -> Result<Vec<Result<FlightInfo>>> {
        let records = self
            .catalog
            .list(criteria.target.as_deref(), criteria.prefix.as_deref())
            .await?;
        // Only what the caller may read is listed.
        Ok(records
            .iter()
            .filter(|r| caller.may(Access::Read, &r.target, &r.asset))
            .map(|r| self.flight_info(r, Vec::new()))
            .collect())
    }

    /// GetFlightInfo's work: the asset's FlightInfo, for the partitions the descriptor names.
    pub(super) async fn flight_info_for(&self, cmd: &AssetCommand) -> Result<FlightInfo> {
        let record = self.record(&cmd.target, &cmd.asset).await?;
        let partitions = select_partitions(&record, cmd.partition.as_slice())?
            .filter(|_| cmd.partition.is_some())
            .unwrap_or_default();
        self.flight_info(&record, partitions)
    }
}

fn select_partitions(record: &AssetRecord, wanted: &[Partition]) -> Result<Option<Vec<Partition>>> {
    if !record.layout.is_partitioned() {
        if !wanted.is_empty() {
            return Err(Error::invalid_request(format!(
                "asset '{}' in target '{}' is not partitioned; read it without \"partition\"",
                record.asset, record.target
            )));
        }
        return Ok(None);
    }
    if wanted.is_empty() {
        return Ok(Some(
            record
                .partitions
                .iter()
                .map(|p| p.partition.clone())
                .collect(),
        ));
    }
    for p in wanted {
        if !record.partitions.iter().any(|r| &r.partition == p) {
            return Err(Error::AssetNotFound {
                target: record.target.clone(),
                asset: record.asset.to_string(),
                partition: Some(p.to_string()),
            });
        }
    }
    Ok(Some(wanted.to_vec()))
}

fn project(record: &AssetRecord, columns: &[String]) -> Result<Vec<usize>> {
    columns
        .iter()
        .map(|c| {
            record.schema.index_of(c).map_err(|_| {
                Error::invalid_request(format!(
                    "column '{}' is not in asset '{}'; columns: {}",
                    echo(c),
                    record.asset,
                    field_summary(&record.schema)
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        })
        .collect()
}
