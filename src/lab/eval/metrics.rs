//! Retrieval metrics, accumulated per group and overall, and their report.
//!
//! Near-duplicate search has one right answer per query: recall@1 and
//! recall@10 say whether it came first / in the top 10, and average
//! precision is `1 / rank` (0 when not in the results), so mAP is the mean
//! reciprocal rank. Class search has many right answers: precision@k is the
//! share of the top k in the query's class, and average precision is taken
//! over the whole ranking.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

/// Sums for one group of queries.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    queries: usize,
    at_1: f64,
    at_10: f64,
    ap: f64,
}

impl Sums {
    fn add(&mut self, at_1: f64, at_10: f64, ap: f64) {
        self.queries += 1;
        self.at_1 += at_1;
        self.at_10 += at_10;
        self.ap += ap;
    }

    fn row(&self, group: &str) -> Row {
        let n = self.queries.max(1) as f64;
        Row {
            group: group.to_string(),
            queries: self.queries,
            at_1: self.at_1 / n,
            at_k: self.at_10 / n,
            map: self.ap / n,
        }
    }
}

/// One line of a report. For near-duplicates `at_1`/`at_k` are
/// recall@1 / recall@10; for classes, precision@1 / precision@k (the
/// report's column labels say which).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub group: String,
    pub queries: usize,
    pub at_1: f64,
    pub at_k: f64,
    pub map: f64,
}

/// Accumulates per-query outcomes.
#[derive(Debug, Default)]
pub struct Tally {
    overall: Sums,
    groups: BTreeMap<String, Sums>,
}

impl Tally {
    /// A near-duplicate query whose original came at `rank` (1-based), or
    /// not in the results.
    pub fn add_near_dup(&mut self, group: &str, rank: Option<usize>) {
        let hit = |k: usize| f64::from(u8::from(rank.is_some_and(|r| r <= k)));
        let ap = rank.map_or(0.0, |r| 1.0 / r as f64);
        self.add(group, hit(1), hit(10), ap);
    }

    /// A class query: `relevant[i]` says whether the i-th result is in the
    /// query's class; `total_relevant` is how many stored images are.
    pub fn add_class(&mut self, group: &str, relevant: &[bool], k: usize, total_relevant: usize) {
        let p_at = |n: usize| {
            let n = n.min(relevant.len()).max(1);
            relevant[..n.min(relevant.len())]
                .iter()
                .filter(|&&r| r)
                .count() as f64
                / n as f64
        };
        let (mut found, mut ap) = (0usize, 0.0);
        for (i, &r) in relevant.iter().enumerate() {
            if r {
                found += 1;
                ap += found as f64 / (i + 1) as f64;
            }
        }
        let ap = if total_relevant == 0 {
            0.0
        } else {
            ap / total_relevant as f64
        };
        self.add(group, p_at(1), p_at(k), ap);
    }

    fn add(&mut self, group: &str, first: f64, second: f64, ap: f64) {
        self.overall.add(first, second, ap);
        self.groups
            .entry(group.to_string())
            .or_default()
            .add(first, second, ap);
    }

    /// Rows: overall first, then each group in `order` (others after, sorted).
    pub fn rows(&self, order: &[&str]) -> Vec<Row> {
        let mut rows = vec![self.overall.row("all")];
        for g in order {
            if let Some(s) = self.groups.get(*g) {
                rows.push(s.row(g));
            }
        }
        for (g, s) in &self.groups {
            if !order.contains(&g.as_str()) {
                rows.push(s.row(g));
            }
        }
        rows
    }
}

/// A finished report: what was measured, its column labels and rows.
///
/// As JSON each row is an object keyed by its metrics' names
/// (`{"group": "all", "queries": 800, "recall_at_1": 0.97,
/// "recall_at_10": 0.99, "map": 0.98}`), so a script reads a figure by
/// name; the notes keep their types (numbers stay numbers).
#[derive(Debug, Clone)]
pub struct Report {
    pub kind: String,
    /// Labels of the three metric columns, e.g. `recall@1`, `recall@10`, `mAP`.
    pub columns: [String; 3],
    pub rows: Vec<Row>,
    pub notes: BTreeMap<String, Value>,
}

/// A column label as a JSON key: `recall@10` → `recall_at_10`, `mAP` → `map`.
pub fn json_key(label: &str) -> String {
    label
        .replace('@', "_at_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let keys = self.columns.each_ref().map(|c| json_key(c));
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut row = Map::new();
                row.insert("group".into(), r.group.clone().into());
                row.insert("queries".into(), r.queries.into());
                for (key, value) in keys.iter().zip([r.at_1, r.at_k, r.map]) {
                    row.insert(key.clone(), value.into());
                }
                Value::Object(row)
            })
            .collect();
        serde_json::json!({
            "kind": self.kind,
            "columns": keys,
            "rows": rows,
            "notes": self.notes,
        })
        .serialize(serializer)
    }
}

impl Report {
    /// A Markdown table, readable in a terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "| {} | queries | {} | {} | {} |\n|---|---|---|---|---|\n",
            self.kind, self.columns[0], self.columns[1], self.columns[2]
        );
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {:.4} | {:.4} | {:.4} |\n",
                r.group, r.queries, r.at_1, r.at_k, r.map
            ));
        }
        for (k, v) in &self.notes {
            match v {
                Value::String(s) => out.push_str(&format!("\n{k}: {s}")),
                other => out.push_str(&format!("\n{k}: {other}")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_dup_metrics() {
        let mut t = Tally::default();
        t.add_near_dup("crop", Some(1));
        t.add_near_dup("crop", Some(4));
        t.add_near_dup("jpeg", None);
        let rows = t.rows(&["jpeg", "crop"]);
        assert_eq!(rows[0].group, "all");
        assert!((rows[0].at_1 - 1.0 / 3.0).abs() < 1e-9);
        assert!((rows[0].at_k - 2.0 / 3.0).abs() < 1e-9);
        assert!((rows[0].map - (1.0 + 0.25) / 3.0).abs() < 1e-9);
        assert_eq!(rows[1].group, "jpeg");
        assert_eq!(rows[2].queries, 2);
    }

    #[test]
    fn class_metrics() {
        let mut t = Tally::default();
        // Relevant at ranks 1 and 3 of 3 relevant in all: AP = (1 + 2/3) / 3.
        t.add_class("fish", &[true, false, true, false], 4, 3);
        let r = &t.rows(&[])[0];
        assert!((r.at_1 - 1.0).abs() < 1e-9);
        assert!((r.at_k - 0.5).abs() < 1e-9);
        assert!((r.map - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-9);
    }

    #[test]
    fn json_rows_are_keyed_by_metric_name() {
        let mut t = Tally::default();
        t.add_near_dup("crop", Some(2));
        let mut notes = BTreeMap::new();
        notes.insert("photos".to_string(), Value::from(40));
        let report = Report {
            kind: "near-dup family".into(),
            columns: ["recall@1".into(), "recall@10".into(), "mAP".into()],
            rows: t.rows(&[]),
            notes,
        };
        let json = serde_json::to_value(&report).expect("json");
        let all = &json["rows"][0];
        assert_eq!(all["group"], "all");
        assert_eq!(all["recall_at_1"], 0.0);
        assert_eq!(all["recall_at_10"], 1.0);
        assert_eq!(all["map"], 0.5);
        assert_eq!(json["notes"]["photos"], 40);
        assert_eq!(json_key("precision@3"), "precision_at_3");
    }
}
