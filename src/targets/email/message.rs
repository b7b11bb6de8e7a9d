//! The message's parts: the subject from its template, and the body, a summary (rows, columns
//! and their types) and the first rows as a table, in HTML and in plain text.

use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_array::RecordBatch;
use arrow_schema::Schema;

/// What the subject's placeholders stand for.
pub struct Facts<'a> {
    pub asset: &'a str,
    pub partition: Option<&'a str>,
    pub rows: u64,
    pub date: &'a str,
}

/// The subject template with `{asset}`, `{partition}`, `{rows}` and `{date}` filled in (an
/// unpartitioned put's `{partition}` is empty).
pub fn subject(template: &str, facts: &Facts) -> String {
    template
        .replace("{asset}", facts.asset)
        .replace("{partition}", facts.partition.unwrap_or(""))
        .replace("{rows}", &facts.rows.to_string())
        .replace("{date}", facts.date)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The preview's cells as text, row by row; a null is empty.
fn cells(preview: Option<&RecordBatch>) -> Vec<Vec<String>> {
    let Some(batch) = preview else {
        return Vec::new();
    };
    let options = FormatOptions::default().with_null("");
    let formatters: Vec<Option<ArrayFormatter>> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
        .collect();
    (0..batch.num_rows())
        .map(|row| {
            formatters
                .iter()
                .map(|f| match f {
                    Some(f) => f.value(row).to_string(),
                    None => "?".to_string(),
                })
                .collect()
        })
        .collect()
}

/// The HTML body: a summary and the preview as a table.
pub fn html(
    facts: &Facts,
    schema: &Schema,
    preview: Option<&RecordBatch>,
    attached: &str,
) -> String {
    let mut out = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body style=\"font-family: sans-serif\">",
    );
    out.push_str(&format!("<h2>{}</h2>", escape(facts.asset)));
    out.push_str("<table class=\"summary\">");
    let mut fact = |name: &str, value: &str| {
        out.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            escape(name),
            escape(value)
        ));
    };
    if let Some(p) = facts.partition {
        fact("Partition", p);
    }
    fact("Rows", &facts.rows.to_string());
    fact("Columns", &schema.fields().len().to_string());
    fact("Date", facts.date);
    if !attached.is_empty() {
        fact("Attached", attached);
    }
    out.push_str("</table>");
    out.push_str("<h3>Columns</h3><table class=\"columns\" border=\"1\" cellpadding=\"4\" style=\"border-collapse: collapse\"><tr><th>Column</th><th>Type</th><th>Nullable</th></tr>");
    for field in schema.fields() {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(field.name()),
            escape(&field.data_type().to_string()),
            if field.is_nullable() { "yes" } else { "no" }
        ));
    }
    out.push_str("</table>");
    let rows = cells(preview);
    out.push_str(&format!(
        "<h3>First {} of {} rows</h3>",
        rows.len(),
        facts.rows
    ));
    out.push_str("<table class=\"rows\" border=\"1\" cellpadding=\"4\" style=\"border-collapse: collapse\"><tr>");
    for field in schema.fields() {
        out.push_str(&format!("<th>{}</th>", escape(field.name())));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            out.push_str(&format!("<td>{}</td>", escape(&cell)));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></body></html>");
    out
}

/// The plain-text alternative: the same summary, and the preview as tab-separated lines.
pub fn text(
    facts: &Facts,
    schema: &Schema,
    preview: Option<&RecordBatch>,
    attached: &str,
) -> String {
    let mut out = format!("{}\n\n", facts.asset);
    if let Some(p) = facts.partition {
        out.push_str(&format!("Partition: {p}\n"));
    }
    out.push_str(&format!(
        "Rows: {}\nColumns: {}\nDate: {}\n",
        facts.rows,
        schema.fields().len(),
        facts.date
    ));
    if !attached.is_empty() {
        out.push_str(&format!("Attached: {attached}\n"));
    }
    out.push_str("\nColumns:\n");
    for field in schema.fields() {
        out.push_str(&format!(
            "  {}: {}{}\n",
            field.name(),
            field.data_type(),
            if field.is_nullable() {
                ""
            } else {
                " (not null)"
            }
        ));
    }
    let rows = cells(preview);
    out.push_str(&format!("\nFirst {} of {} rows:\n", rows.len(), facts.rows));
    let header: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    out.push_str(&header.join("\t"));
    out.push('\n');
    for row in rows {
        out.push_str(&row.join("\t"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int32Array, StringArray};
    use arrow_schema::{DataType, Field};

    use super::*;

    #[test]
    fn subject_body_and_escaping() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("note", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("<b>&"), None])),
            ],
        )
        .unwrap();
        let facts = Facts {
            asset: "sales/daily",
            partition: Some("2024-01-31"),
            rows: 2,
            date: "2024-02-01",
        };
        assert_eq!(
            subject("{asset} {partition}: {rows} rows on {date}", &facts),
            "sales/daily 2024-01-31: 2 rows on 2024-02-01"
        );
        let html = html(&facts, &schema, Some(&batch), "sales_daily.csv");
        assert!(html.contains("<td>&lt;b&gt;&amp;</td>"), "{html}");
        assert!(html.contains("<tr><td>2</td><td></td></tr>"), "{html}");
        assert!(
            html.contains("<td>note</td><td>Utf8</td><td>yes</td>"),
            "{html}"
        );
        let text = text(&facts, &schema, Some(&batch), "");
        assert!(text.contains("id\tnote\n1\t<b>&\n2\t\n"), "{text}");
        assert!(text.contains("Rows: 2\n"), "{text}");
    }
}
