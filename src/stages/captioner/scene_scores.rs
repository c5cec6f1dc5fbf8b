//! The captioner's scores on the embedded scene set: the facts its paragraphs state
//! (parsed) against the scene metadata, per field, and what its attribute heads read
//! against what its paragraphs say.

use super::*;

/// Ground-truth attribute facts per id, when the dataset is the embedded one.
pub fn synth_facts(ds: &Dataset) -> Result<Option<HashMap<String, Vec<String>>>> {
    if !ds.has_scene_facts()? {
        return Ok(None);
    }
    let rows = ds.metadata()?;
    let mut out = HashMap::new();
    for r in &rows {
        out.insert(r.id.clone(), scene_of(r)?.facts());
    }
    Ok(Some(out))
}

/// Attribute precision / recall / F1 (micro) of captions against the truth, and the F1
/// of each field (`attr_f1.colour`, …): where the facts are lost.
pub fn attribute_scores(
    captions: &[String],
    ids: &[String],
    truth: &HashMap<String, Vec<String>>,
) -> BTreeMap<String, f64> {
    let said: Vec<Vec<String>> = captions.iter().map(|c| parse::parse(c)).collect();
    let (precision, recall, f1) = fact_scores(said.iter().cloned(), ids, truth);
    let mut m = BTreeMap::from([
        ("attr_precision".into(), precision),
        ("attr_recall".into(), recall),
        ("attr_f1".into(), f1),
    ]);
    for field in parse::FACT_FIELDS {
        let only = |facts: &[String]| -> Vec<String> {
            facts
                .iter()
                .filter(|f| parse::fact_field(f) == field)
                .cloned()
                .collect()
        };
        let truth_field: HashMap<String, Vec<String>> =
            truth.iter().map(|(id, f)| (id.clone(), only(f))).collect();
        let f1 = fact_scores(said.iter().map(|s| only(s)), ids, &truth_field).2;
        m.insert(format!("attr_f1.{field}"), f1);
    }
    m
}

/// Micro precision, recall and F1 of predicted fact lists (one per id) against the truth.
pub(super) fn fact_scores(
    predicted: impl Iterator<Item = Vec<String>>,
    ids: &[String],
    truth: &HashMap<String, Vec<String>>,
) -> (f64, f64, f64) {
    let (mut hit, mut pred, mut gold) = (0usize, 0usize, 0usize);
    for (p, id) in predicted.zip(ids) {
        let t = &truth[id];
        hit += p.iter().filter(|f| t.contains(f)).count();
        pred += p.len();
        gold += t.len();
    }
    let precision = hit as f64 / pred.max(1) as f64;
    let recall = hit as f64 / gold.max(1) as f64;
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    (precision, recall, f1)
}

/// The captioner's attribute heads read uint8 `images` in batches, as rows in the probe's
/// evaluation layout.
pub(super) fn head_rows(
    model: &Captioner,
    images: &Tensor,
    device: Device,
) -> Result<Vec<Vec<i64>>> {
    let mut rows = vec![];
    let n = images.size()[0];
    for start in (0..n).step_by(128) {
        let x = to_float(&images.narrow(0, start, 128.min(n - start)), device);
        let logits = model.attribute_logits(&x).context("attribute heads")?;
        rows.extend(rows_from_logits(&logits));
    }
    Ok(rows)
}

/// What the encoder knows against what the paragraph says, when the model has attribute
/// heads: the fact F1 of the heads' own reading of the images (`heads_fact_f1`) and of the
/// captions (`caption_fact_f1`), both without details (the facts a head row can assert).
/// The gap between them is what the decoder loses while writing.
pub(super) fn heads_vs_caption(
    model: &Captioner,
    captions: &[String],
    data: &SplitData,
    truth: &HashMap<String, Vec<String>>,
    device: Device,
) -> Result<Option<BTreeMap<String, f64>>> {
    if !model.wants_attributes() {
        return Ok(None);
    }
    let rows = head_rows(model, &data.images, device)?;
    let plain: HashMap<String, Vec<String>> = truth
        .iter()
        .map(|(id, f)| {
            (
                id.clone(),
                f.iter().filter(|x| is_probe_fact(x)).cloned().collect(),
            )
        })
        .collect();
    let heads = fact_scores(rows.iter().map(|r| facts_of_row(r)), &data.ids, &plain).2;
    let written = fact_scores(
        captions.iter().map(|c| {
            parse::parse(c)
                .into_iter()
                .filter(|x| is_probe_fact(x))
                .collect()
        }),
        &data.ids,
        &plain,
    )
    .2;
    Ok(Some(BTreeMap::from([
        ("heads_fact_f1".into(), heads),
        ("caption_fact_f1".into(), written),
    ])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_field_scores_show_where_facts_are_lost() {
        let truth = HashMap::from([(
            "a".to_string(),
            vec![
                "sky=dawn".to_string(),
                "house.colour=red".to_string(),
                "house.size=small".to_string(),
            ],
        )]);
        // A paragraph that gets the sky and size right and the colour wrong.
        let said = "This oil painting shows a dawn sky above a calm sea. In the bottom left a small blue house stands.";
        let m = attribute_scores(&[said.to_string()], &["a".to_string()], &truth);
        assert_eq!(m["attr_f1.sky"], 1.0);
        assert_eq!(m["attr_f1.size"], 1.0);
        assert_eq!(m["attr_f1.colour"], 0.0);
        // Fields the truth lacks and the paragraph states score 0, not NaN.
        assert_eq!(m["attr_f1.detail"], 0.0);
        assert!(m["attr_f1"] > 0.0 && m["attr_f1"] < 1.0);
    }
}
