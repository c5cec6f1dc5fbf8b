//! The headline figures of one run of the whole path (captioner, generator, cycle):
//! `headline.json` beside a cycle report, and the table that sets several reports side
//! by side (the general path beside the scene-supervised one, which is its upper bound
//! on the embedded set).

use super::escape;
use crate::util::fsio::{read_json, write_json};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a figure is read: a stage's `eval_<split>/metrics.json`, or a column of the
/// cycle's table.
enum Source {
    Captioner,
    Generator,
    Cycle(&'static str),
}

/// The figures, in the order they are shown: (key in `headline.json`, label, source,
/// metric name there).
const FIGURES: [(&str, &str, Source, &str); 12] = [
    (
        "captioner_attr_f1",
        "captioner attribute F1",
        Source::Captioner,
        "attr_f1",
    ),
    (
        "captioner_bleu4",
        "captioner BLEU-4",
        Source::Captioner,
        "bleu4",
    ),
    (
        "captioner_cider_d",
        "captioner CIDEr-D",
        Source::Captioner,
        "cider_d",
    ),
    (
        "generator_r_precision",
        "generator R-precision",
        Source::Generator,
        "r_precision",
    ),
    (
        "generator_probe_accuracy",
        "generator probe attribute accuracy",
        Source::Generator,
        "probe_attr_accuracy",
    ),
    (
        "generator_clip_score",
        "generator image–text score",
        Source::Generator,
        "clip_score",
    ),
    (
        "generator_fd_own",
        "generator FD (own encoder)",
        Source::Generator,
        "fd_own",
    ),
    (
        "cycle_probe_agreement",
        "cycle probe agreement",
        Source::Cycle("cycle"),
        "probe_attr_agreement",
    ),
    (
        "nearest_neighbour_probe_agreement",
        "nearest-neighbour probe agreement",
        Source::Cycle("nearest neighbour"),
        "probe_attr_agreement",
    ),
    (
        "cycle_r_precision",
        "cycle R-precision",
        Source::Cycle("cycle"),
        "r_precision",
    ),
    (
        "nearest_neighbour_r_precision",
        "nearest-neighbour R-precision",
        Source::Cycle("nearest neighbour"),
        "r_precision",
    ),
    (
        "cycle_image_text",
        "cycle image–text score",
        Source::Cycle("cycle"),
        "clip_image_text",
    ),
];

/// One report's headline: which runs made it, on which split, and their figures (only
/// those that were measured: no probe, no attribute figures).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Headline {
    pub captioner: PathBuf,
    pub generator: PathBuf,
    pub split: String,
    pub figures: BTreeMap<String, f64>,
}

type Metrics = BTreeMap<String, f64>;

/// A stage's evaluation on `split`, when `eval` has written it.
fn stage_eval(run: &Path, split: &str) -> Result<Option<Metrics>> {
    let path = run.join(format!("eval_{split}")).join("metrics.json");
    path.exists().then(|| read_json(&path)).transpose()
}

impl Headline {
    /// The figures of a cycle over `split`: its `table`, and the captioner's and the
    /// generator's own evaluations on the same split where they exist.
    pub fn collect(
        captioner: &Path,
        generator: &Path,
        split: &str,
        table: &BTreeMap<String, Metrics>,
    ) -> Result<Self> {
        let cap = stage_eval(captioner, split)?;
        let gen = stage_eval(generator, split)?;
        let mut figures = BTreeMap::new();
        for (key, _, source, metric) in &FIGURES {
            let found = match source {
                Source::Captioner => cap.as_ref(),
                Source::Generator => gen.as_ref(),
                Source::Cycle(column) => table.get(*column),
            }
            .and_then(|m| m.get(*metric));
            if let Some(v) = found {
                figures.insert(key.to_string(), *v);
            }
        }
        Ok(Headline {
            captioner: captioner.to_path_buf(),
            generator: generator.to_path_buf(),
            split: split.to_string(),
            figures,
        })
    }

    pub fn write(&self, report: &Path) -> Result<()> {
        write_json(&report.join("headline.json"), self)
    }

    /// The headline of the report folder `report`, for `cycle --beside`.
    pub fn read(report: &Path) -> Result<Self> {
        let path = report.join("headline.json");
        if !path.exists() {
            bail!(
                "{} does not exist: --beside takes a report folder written by `ekphrasis cycle`",
                path.display()
            );
        }
        read_json(&path)
    }
}

/// The headline table of this report (`own`, named `name`) beside `others`, each column
/// headed by its report's name and the runs that made it. A row no column measured is
/// left out.
pub fn table_html(name: &str, own: &Headline, others: &[(String, Headline)]) -> String {
    let columns: Vec<(&str, &Headline)> = std::iter::once((name, own))
        .chain(others.iter().map(|(n, h)| (n.as_str(), h)))
        .collect();
    let head: String = columns
        .iter()
        .map(|(n, h)| {
            format!(
                "<th>{}<br><small>{}, {}; {}</small></th>",
                escape(n),
                escape(&h.captioner.display().to_string()),
                escape(&h.generator.display().to_string()),
                escape(&h.split)
            )
        })
        .collect();
    let mut rows = String::new();
    for (key, label, _, _) in &FIGURES {
        if columns.iter().all(|(_, h)| !h.figures.contains_key(*key)) {
            continue;
        }
        rows.push_str(&format!("<tr><td>{}</td>", escape(label)));
        for (_, h) in &columns {
            match h.figures.get(*key) {
                Some(v) => rows.push_str(&format!("<td>{v:.3}</td>")),
                None => rows.push_str("<td></td>"),
            }
        }
        rows.push_str("</tr>");
    }
    format!("<table><tr><th>figure</th>{head}</tr>{rows}</table>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_stage_evaluations_and_the_cycle_table() {
        let dir = tempfile::tempdir().unwrap();
        let (cap, gen) = (dir.path().join("cap"), dir.path().join("gen"));
        for (run, json) in [
            (&cap, r#"{"attr_f1": 0.4, "bleu4": 0.3}"#),
            (&gen, r#"{"r_precision": 0.5}"#),
        ] {
            std::fs::create_dir_all(run.join("eval_test")).unwrap();
            std::fs::write(run.join("eval_test/metrics.json"), json).unwrap();
        }
        let table: BTreeMap<String, Metrics> = [(
            "nearest neighbour".to_string(),
            [("r_precision".to_string(), 0.7)].into(),
        )]
        .into();
        let h = Headline::collect(&cap, &gen, "test", &table).unwrap();
        let want: BTreeMap<String, f64> = [
            ("captioner_attr_f1", 0.4),
            ("captioner_bleu4", 0.3),
            ("generator_r_precision", 0.5),
            ("nearest_neighbour_r_precision", 0.7),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(h.figures, want);
        // On another split neither stage has been evaluated.
        let val = Headline::collect(&cap, &gen, "val", &table).unwrap();
        assert_eq!(val.figures.len(), 1);

        h.write(dir.path()).unwrap();
        assert_eq!(Headline::read(dir.path()).unwrap(), h);
        let err = Headline::read(&cap).unwrap_err().to_string();
        assert!(
            err.contains("headline.json") && err.contains("--beside"),
            "{err}"
        );

        let mut other = h.clone();
        other.figures.insert("generator_fd_own".into(), 12.0);
        let html = table_html("demo", &h, &[("scenes".into(), other)]);
        assert!(html.contains("<th>demo<br>") && html.contains("<th>scenes<br>"));
        assert!(html.contains("<td>generator FD (own encoder)</td><td></td><td>12.000</td>"));
        assert!(
            !html.contains("cycle probe agreement"),
            "unmeasured rows are left out"
        );
    }
}
