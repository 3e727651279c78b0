//! Tables for the text output: columns as wide as their longest cell (comfy-table), no
//! borders, so that long names keep the columns aligned and the output stays greppable.

use comfy_table::{ContentArrangement, Table, presets};

/// Prints `rows` under `header`, every column aligned.
pub fn print<const N: usize>(header: [&str; N], rows: impl IntoIterator<Item = [String; N]>) {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    for row in rows {
        table.add_row(row);
    }
    // comfy-table pads each cell with one space on both sides: drop the outer ones.
    for line in table.lines() {
        println!("{}", line.trim_end().strip_prefix(' ').unwrap_or(&line));
    }
}
