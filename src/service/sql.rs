//! Arrow Flight SQL over the catalog: every asset a caller may read is a table
//! `"<target>"."<asset path>"` of an embedded, read-only DuckDB, made for each query.
//!
//! Flight SQL commands arrive as `google.protobuf.Any` messages in descriptors, tickets,
//! actions and DoPut descriptors; the asset protocol's JSON and protobuf commands never
//! decode as one (see [`command`]). A statement's handle is the statement itself (its SQL and
//! bound parameters, as JSON), so any server of a cluster answers any step of a query and
//! nothing is kept between calls. Each table reads its asset through the same path as DoGet
//! (catalog version pinned at planning, exact types, the columns the query uses), opened only
//! when the query reaches it.

use std::sync::{Arc, OnceLock};

use arrow_array::RecordBatch;
use arrow_flight::sql::metadata::{GetCatalogsBuilder, SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, Command, CommandGetDbSchemas, CommandGetTables,
    CommandPreparedStatementQuery, CommandStatementIngest, CommandStatementQuery,
    DoPutPreparedStatementResult, DoPutUpdateResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, PutResult,
    SchemaAsIpc, Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{ArrowError, Schema, SchemaRef};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Inner, PutStream};
use crate::asset::AssetKey;
use crate::auth::{Access, Principal};
use crate::catalog::AssetRecord;
use crate::error::{Error, Result, echo};
use crate::protocol::PutSummary;
use crate::targets::SendableBatchStream;

const SQL_TYPE_PREFIX: &str = "type.googleapis.com/arrow.flight.protocol.sql.";

/// The catalog every table is in.
pub const CATALOG: &str = "quiver";

/// The Flight SQL command `bytes` carry, if they carry one: an `Any` whose type is a Flight
/// SQL message. The asset protocol's JSON starts with `{`, and its protobuf messages have no
/// field whose text could start with the Flight SQL type prefix.
pub(super) fn command(bytes: &[u8]) -> Option<Result<Command>> {
    if bytes.first() == Some(&b'{') {
        return None;
    }
    let any = Any::decode(bytes).ok()?;
    if !any.type_url.starts_with(SQL_TYPE_PREFIX) {
        return None;
    }
    Some(Command::try_from(any).map_err(|e| {
        Error::invalid_request(format!("the Flight SQL command does not decode: {e}"))
    }))
}

/// A statement as its handle carries it: the SQL and its bound parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Statement {
    sql: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    params: Vec<Value>,
}

impl Statement {
    fn handle(&self) -> Bytes {
        serde_json::to_vec(self)
            .expect("a statement serializes")
            .into()
    }

    fn from_handle(handle: &[u8]) -> Result<Self> {
        serde_json::from_slice(handle).map_err(|_| {
            Error::invalid_request(
                "the statement handle was not made by this server; prepare the statement again",
            )
        })
    }
}

fn unsupported(command: &Command) -> Error {
    let name = command
        .type_url()
        .strip_prefix(SQL_TYPE_PREFIX)
        .unwrap_or(command.type_url());
    Error::unimplemented(format!(
        "Flight SQL {} is not supported: Quiver answers queries (CommandStatementQuery, prepared \
         statements), ingests (CommandStatementIngest) and catalog metadata; write assets with \
         DoPut",
        echo(name)
    ))
}

fn schema_bytes(schema: &Schema) -> Result<Bytes> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: ArrowError| Error::internal(format!("encoding a schema: {e}")))?;
    Ok(message.0)
}

fn flight_info(
    schema: &Schema,
    ticket: Any,
    descriptor: FlightDescriptor,
    rows: Option<usize>,
) -> Result<FlightInfo> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Error::internal(format!("encoding a schema: {e}")))?
        .with_descriptor(descriptor)
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec())))
        .with_total_records(rows.map_or(-1, |r| r as i64));
    Ok(info)
}

fn sql_info() -> &'static SqlInfoData {
    static INFO: OnceLock<SqlInfoData> = OnceLock::new();
    INFO.get_or_init(|| {
        let mut builder = SqlInfoDataBuilder::new();
        builder.append(SqlInfo::FlightSqlServerName, "Quiver");
        builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        builder.append(SqlInfo::FlightSqlServerArrowVersion, "60");
        builder.append(SqlInfo::FlightSqlServerReadOnly, true);
        builder.append(SqlInfo::FlightSqlServerSql, true);
        builder.append(SqlInfo::FlightSqlServerSubstrait, false);
        builder.append(SqlInfo::FlightSqlServerTransaction, 0_i32);
        builder.append(SqlInfo::FlightSqlServerCancel, false);
        builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        builder.append(SqlInfo::SqlDdlCatalog, false);
        builder.append(SqlInfo::SqlDdlSchema, false);
        builder.append(SqlInfo::SqlDdlTable, false);
        builder
            .build()
            .expect("the server's SQL info is well-formed")
    })
}

impl Inner {
    /// The assets `caller` may read, in catalog order.
    async fn readable(&self, caller: &Principal) -> Result<Vec<AssetRecord>> {
        let records = self.catalog.list(None, None).await?;
        Ok(records
            .into_iter()
            .filter(|r| caller.may(Access::Read, &r.target, &r.asset))
            .collect())
    }

    /// GetFlightInfo (and GetSchema) of a Flight SQL command.
    pub(super) async fn sql_flight_info(
        self: &Arc<Self>,
        caller: &Principal,
        command: Command,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
        match command {
            Command::CommandStatementQuery(CommandStatementQuery { query, .. }) => {
                let statement = Statement {
                    sql: query,
                    params: Vec::new(),
                };
                self.statement_info(caller, &statement, descriptor).await
            }
            Command::CommandPreparedStatementQuery(CommandPreparedStatementQuery {
                prepared_statement_handle,
            }) => {
                let statement = Statement::from_handle(&prepared_statement_handle)?;
                self.statement_info(caller, &statement, descriptor).await
            }
            other => {
                let batch = self.metadata(caller, &other).await?;
                flight_info(
                    &batch.schema(),
                    other.into_any(),
                    descriptor,
                    Some(batch.num_rows()),
                )
            }
        }
    }

    /// A statement's FlightInfo: its result schema, and a ticket that runs it.
    async fn statement_info(
        self: &Arc<Self>,
        caller: &Principal,
        statement: &Statement,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo> {
        let schema = self.plan(caller, statement).await?;
        let ticket = TicketStatementQuery {
            statement_handle: statement.handle(),
        };
        flight_info(&schema, ticket.as_any(), descriptor, None)
    }

    /// DoGet of a Flight SQL ticket.
    pub(super) async fn sql_read(
        self: &Arc<Self>,
        caller: &Principal,
        command: Command,
    ) -> Result<(SchemaRef, SendableBatchStream)> {
        match command {
            Command::TicketStatementQuery(TicketStatementQuery { statement_handle }) => {
                let statement = Statement::from_handle(&statement_handle)?;
                self.run(caller, statement).await
            }
            other => {
                let batch = self.metadata(caller, &other).await?;
                let schema = batch.schema();
                Ok((schema, Box::pin(futures::stream::once(async { Ok(batch) }))))
            }
        }
    }

    /// The one batch a catalog metadata command answers with.
    async fn metadata(&self, caller: &Principal, command: &Command) -> Result<RecordBatch> {
        let built = match command {
            Command::CommandGetSqlInfo(cmd) => cmd.clone().into_builder(sql_info()).build(),
            Command::CommandGetCatalogs(cmd) => {
                let mut builder: GetCatalogsBuilder = (*cmd).into_builder();
                builder.append(CATALOG);
                builder.build()
            }
            Command::CommandGetDbSchemas(cmd) => {
                let mut builder = CommandGetDbSchemas::into_builder(cmd.clone());
                for target in self.targets.names() {
                    builder.append(CATALOG, target);
                }
                builder.build()
            }
            Command::CommandGetTables(cmd) => {
                let mut builder = CommandGetTables::into_builder(cmd.clone());
                for record in self.readable(caller).await? {
                    builder
                        .append(
                            CATALOG,
                            &record.target,
                            record.asset.to_string(),
                            "TABLE",
                            &record.schema,
                        )
                        .map_err(|e| Error::internal(e.to_string()))?;
                }
                builder.build()
            }
            Command::CommandGetTableTypes(cmd) => {
                let mut builder = (*cmd).into_builder();
                builder.append("TABLE");
                builder.build()
            }
            other => return Err(unsupported(other)),
        };
        built.map_err(|e| Error::internal(format!("building a metadata answer: {e}")))
    }

    /// DoAction of a Flight SQL action, or `None` when the action is not one.
    pub(super) async fn sql_act(
        self: &Arc<Self>,
        caller: &Principal,
        action: &Action,
    ) -> Option<Result<arrow_flight::Result>> {
        let body = match action.r#type.as_str() {
            "CreatePreparedStatement" => {
                let request = match Any::decode(&*action.body)
                    .ok()
                    .and_then(|any| any.unpack::<ActionCreatePreparedStatementRequest>().ok())
                    .flatten()
                {
                    Some(request) => request,
                    None => {
                        return Some(Err(Error::invalid_request(
                            "CreatePreparedStatement needs an ActionCreatePreparedStatementRequest",
                        )));
                    }
                };
                let statement = Statement {
                    sql: request.query,
                    params: Vec::new(),
                };
                self.prepare(caller, statement).await.map(|r| r.as_any())
            }
            "ClosePreparedStatement" => {
                // Handles hold the statement itself: nothing to free.
                let closed = Any::decode(&*action.body)
                    .ok()
                    .and_then(|any| any.unpack::<ActionClosePreparedStatementRequest>().ok())
                    .flatten();
                match closed {
                    Some(_) => return Some(Ok(arrow_flight::Result { body: Bytes::new() })),
                    None => Err(Error::invalid_request(
                        "ClosePreparedStatement needs an ActionClosePreparedStatementRequest",
                    )),
                }
            }
            "BeginTransaction"
            | "EndTransaction"
            | "BeginSavepoint"
            | "EndSavepoint"
            | "CancelQuery"
            | "CreatePreparedSubstraitPlan" => Err(Error::unimplemented(format!(
                "Flight SQL action {} is not supported: queries run outside transactions, and a \
                 query stops when its DoGet stream is closed",
                action.r#type
            ))),
            _ => return None,
        };
        Some(body.map(|any| arrow_flight::Result {
            body: any.encode_to_vec().into(),
        }))
    }

    async fn prepare(
        self: &Arc<Self>,
        caller: &Principal,
        statement: Statement,
    ) -> Result<ActionCreatePreparedStatementResult> {
        let schema = self.plan(caller, &statement).await?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: statement.handle(),
            dataset_schema: schema_bytes(&schema)?,
            parameter_schema: Bytes::new(),
        })
    }

    /// DoPut with a Flight SQL descriptor: binds a prepared statement's parameters (the first
    /// row of the batches sent) and answers with the handle of the bound statement.
    pub(super) async fn sql_put(
        &self,
        command: Command,
        first: FlightData,
        rest: PutStream,
    ) -> Result<PutResult> {
        let handle = match command {
            Command::CommandPreparedStatementQuery(cmd) => cmd.prepared_statement_handle,
            other => return Err(unsupported(&other)),
        };
        let mut statement = Statement::from_handle(&handle)?;
        let input = futures::stream::once(async { Ok(first) }).chain(rest);
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                input.map(|m| m.map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s)))),
            )
            .map(|b| {
                b.map_err(|e| Error::invalid_data(format!("the parameters do not decode: {e}")))
            })
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows > 1 {
            return Err(Error::invalid_request(format!(
                "{rows} rows of parameters were sent; a query binds one row of parameters per \
                 execution"
            )));
        }
        statement.params = match batches.iter().find(|b| b.num_rows() == 1) {
            Some(batch) => params_of(batch)?,
            None => Vec::new(),
        };
        let result = DoPutPreparedStatementResult {
            prepared_statement_handle: Some(statement.handle()),
        };
        Ok(PutResult {
            app_metadata: result.encode_to_vec().into(),
        })
    }
}

/// The answer to a Flight SQL ingest: the rows stored.
pub(super) fn ingested(summary: &PutSummary) -> PutResult {
    let result = DoPutUpdateResult {
        record_count: summary.rows as i64,
    };
    PutResult {
        app_metadata: result.encode_to_vec().into(),
    }
}

impl Inner {
    /// The asset put a Flight SQL ingest stands for: the table's schema names the target and
    /// its name the asset; an existing asset is appended to or replaced as the ingest asks
    /// (ADBC's `adbc_ingest` modes `append`, `replace`, `create_append`), or refused with
    /// ALREADY_EXISTS (`create`).
    pub(super) async fn ingest_descriptor(
        &self,
        caller: &Principal,
        cmd: &CommandStatementIngest,
    ) -> Result<FlightDescriptor> {
        use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
        let target = cmd
            .schema
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::invalid_request(
                    "an ingest names its target as the table's schema (ADBC: \
                 adbc_ingest(..., db_schema_name=\"parquet\"))",
                )
            })?;
        if let Some(catalog) = cmd
            .catalog
            .as_deref()
            .filter(|c| !c.is_empty() && *c != CATALOG)
        {
            return Err(Error::invalid_request(format!(
                "the catalog is '{CATALOG}', not '{}'; leave it out",
                echo(catalog)
            )));
        }
        if cmd.temporary || cmd.transaction_id.is_some() {
            return Err(Error::unimplemented(
                "temporary tables and transactions are not supported; ingest into an asset \
                 without them",
            ));
        }
        let asset = AssetKey::parse(&cmd.table)?;
        self.targets.get(&target)?;
        caller.check(Access::Write, &target, &asset)?;
        let options = cmd.table_definition_options.unwrap_or_default();
        let exists = self.catalog.get(&target, &asset).await?.is_some();
        let mode = if exists {
            match options.if_exists() {
                TableExistsOption::Append => "append",
                TableExistsOption::Replace => "overwrite",
                TableExistsOption::Fail | TableExistsOption::Unspecified => {
                    return Err(Error::AlreadyExists {
                        message: format!(
                            "asset '{asset}' already exists in target '{target}'; ingest with \
                             mode append or replace"
                        ),
                    });
                }
            }
        } else if options.if_not_exist() == TableNotExistOption::Fail {
            return Err(Error::AssetNotFound {
                target,
                asset: asset.to_string(),
                partition: None,
            });
        } else {
            "overwrite"
        };
        let command =
            serde_json::json!({"target": target, "asset": asset.to_string(), "mode": mode});
        Ok(FlightDescriptor::new_cmd(command.to_string()))
    }
}

/// The first row of `batch` as parameter values: numbers and booleans as themselves, every
/// other type as its text, which DuckDB casts to the parameter's type.
fn params_of(batch: &RecordBatch) -> Result<Vec<Value>> {
    use arrow_array::cast::AsArray;
    use arrow_schema::DataType;
    let options = arrow_cast::display::FormatOptions::default();
    batch
        .columns()
        .iter()
        .map(|column| {
            if column.is_null(0) {
                return Ok(Value::Null);
            }
            let value = match column.data_type() {
                DataType::Boolean => Value::Bool(column.as_boolean().value(0)),
                DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32 => {
                    let cast = arrow_cast::cast(column, &DataType::Int64)
                        .map_err(|e| Error::invalid_data(e.to_string()))?;
                    Value::from(
                        cast.as_primitive::<arrow_array::types::Int64Type>()
                            .value(0),
                    )
                }
                DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                    let cast = arrow_cast::cast(column, &DataType::Float64)
                        .map_err(|e| Error::invalid_data(e.to_string()))?;
                    Value::from(
                        cast.as_primitive::<arrow_array::types::Float64Type>()
                            .value(0),
                    )
                }
                _ => {
                    let formatter =
                        arrow_cast::display::ArrayFormatter::try_new(column.as_ref(), &options)
                            .map_err(|e| {
                                Error::invalid_data(format!(
                                    "a parameter of type {} cannot be bound: {e}",
                                    column.data_type()
                                ))
                            })?;
                    Value::String(formatter.value(0).to_string())
                }
            };
            Ok(value)
        })
        .collect()
}

#[cfg(feature = "duckdb")]
mod engine;

#[cfg(not(feature = "duckdb"))]
impl Inner {
    async fn plan(&self, _caller: &Principal, _statement: &Statement) -> Result<SchemaRef> {
        Err(no_engine())
    }

    async fn run(
        &self,
        _caller: &Principal,
        _statement: Statement,
    ) -> Result<(SchemaRef, SendableBatchStream)> {
        Err(no_engine())
    }
}

#[cfg(not(feature = "duckdb"))]
fn no_engine() -> Error {
    Error::unimplemented(
        "SQL queries need the DuckDB engine, which this build leaves out (cargo feature \
         `duckdb`); build Quiver with it",
    )
}
