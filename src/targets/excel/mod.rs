//! The Excel target: each asset (or partition) is one `.xlsx` workbook, laid out like the
//! other file targets (`root/<asset path>.xlsx`, `root/<asset path>/<partition>.xlsx`) in a
//! local directory or an object store.
//!
//! It is a [`Format`] of the file target, so staging, the atomic commit, the identity mark
//! [`crate::targets::Target::resolve`] compares, reads pinned to one version, deletes and the
//! start-up sweep are the file target's. What is Excel's own: the workbook is written row by
//! row in constant memory (`write.rs`), every value becomes the cell that shows it best or,
//! where no cell holds it exactly, text the reader parses back (`cells.rs`), and a read
//! returns the put's exact Arrow types from the catalog's schema (`read.rs`).

mod cells;
mod config;
mod options;
mod read;
mod write;

use arrow_schema::{Schema, SchemaRef};
use async_trait::async_trait;

use crate::error::Result;
use crate::protocol::Options;
use crate::targets::SendableBatchStream;
use crate::targets::file::{Encoder, Format, PinnedObject, SharedBuffer};
pub use config::{Excel, ExcelConfig};
pub use options::{EXCEL_MAX_COLUMNS, EXCEL_MAX_ROWS, SheetOptions};

/// Workbooks of one target.
pub(crate) struct ExcelFormat {
    /// The target's name, for error messages.
    target: String,
}

#[async_trait]
impl Format for ExcelFormat {
    fn kind(&self) -> &'static str {
        "excel"
    }

    fn extension(&self) -> &'static str {
        "xlsx"
    }

    fn check_schema(&self, schema: &Schema) -> Result<(), String> {
        let columns = schema.fields().len();
        if columns == 0 {
            return Err("a sheet needs at least one column".to_string());
        }
        if columns > EXCEL_MAX_COLUMNS {
            return Err(format!(
                "it has {columns} columns and an Excel sheet holds at most {EXCEL_MAX_COLUMNS}"
            ));
        }
        schema
            .fields()
            .iter()
            .try_for_each(|field| cells::check_type(field))
    }

    fn encoder(
        &self,
        schema: SchemaRef,
        out: SharedBuffer,
        options: &Options,
    ) -> Result<Box<dyn Encoder>> {
        let options = SheetOptions::parse(options)?;
        Ok(Box::new(write::ExcelEncoder::new(
            &self.target,
            schema,
            options,
            out,
        )))
    }

    async fn read(
        &self,
        object: PinnedObject,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<SendableBatchStream> {
        read::read(object, schema, projection).await
    }
}
