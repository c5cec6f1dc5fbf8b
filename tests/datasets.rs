//! Datasets: determinism, paragraph lengths, splits, tokenizer round trip (and Python's
//! `tokenizers` loading our file unchanged).

mod common;
use common::*;
use ekphrasis::data::layout::{Dataset, Split};
use ekphrasis::data::tokenizer::TextTokenizer;

fn all_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    for sub in [
        "captions.json",
        "metadata.csv",
        "splits/train_ids.txt",
        "splits/test_ids.txt",
    ] {
        out.push((sub.to_string(), std::fs::read(dir.join(sub)).unwrap()));
    }
    let mut imgs: Vec<_> = std::fs::read_dir(dir.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    imgs.sort();
    for p in imgs {
        out.push((
            p.file_name().unwrap().to_string_lossy().into(),
            std::fs::read(&p).unwrap(),
        ));
    }
    out
}

#[test]
fn synth_is_deterministic_and_paragraphs_fit_the_length_rule() {
    let dir = tempfile::tempdir().unwrap();
    let render = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        let (ok, stdout, err) = run(&[
            "data",
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--n",
            "60",
            "--size",
            "32",
            "--seed",
            seed,
        ]);
        assert!(ok, "{err}");
        assert!(stdout.contains("images/s"), "{stdout}");
        out
    };
    let (a, b, c) = (render("a", "1"), render("b", "1"), render("c", "2"));
    assert_eq!(all_bytes(&a), all_bytes(&b), "same seed, same bytes");
    assert_ne!(
        all_bytes(&a),
        all_bytes(&c),
        "another seed, another dataset"
    );
    let ds = Dataset::open(&a).unwrap();
    for (id, text) in ds.captions().unwrap() {
        let n = text.split_whitespace().count();
        assert!((100..=200).contains(&n), "{id}: {n} words");
    }
    let sizes: Vec<usize> = [Split::Train, Split::Val, Split::Test]
        .iter()
        .map(|s| ds.split_ids(*s).unwrap().len())
        .collect();
    assert_eq!(sizes, vec![48, 6, 6]);
    // An existing folder is not overwritten silently.
    assert_clean_error(
        &[
            "data",
            "synth",
            "--out",
            a.to_str().unwrap(),
            "--n",
            "60",
            "--size",
            "32",
        ],
        "--force",
    );
    assert_clean_error(
        &[
            "data",
            "synth",
            "--out",
            dir.path().join("d").to_str().unwrap(),
            "--size",
            "8",
        ],
        "--size",
    );
}

#[test]
fn tokenizer_round_trips_and_python_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(dir.path());
    let ds = Dataset::open(&data).unwrap();
    let tok = TextTokenizer::load(&ds.tokenizer_path()).unwrap();
    assert_eq!((tok.pad, tok.bos, tok.eos), (0, 1, 2));
    let captions = ds.captions().unwrap();
    for text in captions.values() {
        let ids = tok.encode(text, 4096).unwrap();
        assert_eq!(ids[0], tok.bos);
        assert_eq!(*ids.last().unwrap(), tok.eos);
        assert_eq!(&tok.decode(&ids), text);
    }
    // Truncation keeps the end token.
    let short = tok.encode(captions.values().next().unwrap(), 10).unwrap();
    assert_eq!(short.len(), 10);
    assert_eq!(short[9], tok.eos);

    let Some(py) = python() else {
        eprintln!("SKIPPED: EKPHRASIS_PYTHON not set (run through `make test`)");
        return;
    };
    let text = captions.values().next().unwrap();
    let ids: Vec<String> = tok.encode(text, 4096).unwrap()[1..]
        .iter()
        .rev()
        .skip(1)
        .rev()
        .map(|i| i.to_string())
        .collect();
    let script = "import sys, tokenizers\nt = tokenizers.Tokenizer.from_file(sys.argv[1])\nprint(' '.join(map(str, t.encode(sys.argv[2], add_special_tokens=False).ids)))";
    let out = std::process::Command::new(py)
        .args(["-c", script, ds.tokenizer_path().to_str().unwrap(), text])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ids.join(" "));
}
