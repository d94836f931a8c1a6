//! The Markdown tables printed at the end.

use std::fmt::Write as _;

/// One line of the table. Times are median milliseconds.
pub struct Row {
    pub backend: String,
    pub op: String,
    pub reference: Option<f64>,
    pub cli: f64,
    pub api: Option<f64>,
    pub backend_calls: Option<f64>,
    /// A ratio goal (CLI/reference at most this), or an absolute one in ms.
    pub goal: Goal,
}

pub enum Goal {
    None,
    Ratio(f64),
    Ms(f64),
}

impl Row {
    pub fn goal_text(&self) -> String {
        match self.goal {
            Goal::None => String::new(),
            Goal::Ratio(goal) => match self.reference {
                Some(r) if self.cli / r <= goal => format!("≤ {goal}: met"),
                Some(_) => format!("≤ {goal}: **missed**"),
                None => String::new(),
            },
            Goal::Ms(goal) if self.cli < goal => format!("< {goal} ms: met"),
            Goal::Ms(goal) => format!("< {goal} ms: **missed**"),
        }
    }
}

pub fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "—".into(),
    }
}

pub fn print_table(rows: &[Row]) -> String {
    let mut t = String::new();
    t += "| backend | operation | obuilder's commands | snapstore CLI | CLI / obuilder | in-process API | backend calls | goal |\n";
    t += "|---|---|---:|---:|---:|---:|---:|---|\n";
    for r in rows {
        let ratio = r.reference.map(|x| format!("{:.2}", r.cli / x)).unwrap_or("—".into());
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.op,
            ms(r.reference),
            ms(Some(r.cli)),
            ratio,
            ms(r.api),
            ms(r.backend_calls),
            r.goal_text()
        );
    }
    t
}
