//! `data prepare`: each source format on tiny fixtures written here, and every bad-input
//! rule (corrupt, truncated, zero-byte, grayscale, 16-bit, alpha, huge images; paths
//! leaving the folder; duplicate ids; missing and empty captions; non-UTF-8 text).

mod common;
use common::*;
use std::path::Path;

fn png(path: &Path, w: u32, h: u32, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(seed), y as u8, seed])
    })
    .save(path)
    .unwrap();
}

fn jpg(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, seed]))
        .save(path)
        .unwrap();
}

fn prepare(args: &[&str]) -> (bool, String, String) {
    let mut a = vec!["data", "prepare", "--size", "32"];
    a.extend_from_slice(args);
    run(&a)
}

fn rejected(out: &Path) -> String {
    std::fs::read_to_string(out.join("rejected.csv")).unwrap()
}

#[test]
fn captions_csv_with_every_bad_image_kind() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for i in 0..4 {
        jpg(&src.join(format!("ok{i}.jpg")), i as u8);
    }
    image::GrayImage::from_pixel(20, 20, image::Luma([128]))
        .save(src.join("gray.png"))
        .unwrap();
    image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
        20,
        20,
        image::Rgb([60000, 100, 5]),
    )
    .save(src.join("deep.png"))
    .unwrap();
    image::RgbaImage::from_pixel(20, 20, image::Rgba([255, 0, 0, 0]))
        .save(src.join("alpha.png"))
        .unwrap();
    std::fs::write(src.join("empty.jpg"), b"").unwrap();
    std::fs::write(src.join("noise.jpg"), b"this is not an image at all").unwrap();
    let good = std::fs::read(src.join("ok0.jpg")).unwrap();
    std::fs::write(src.join("cut.jpg"), &good[..good.len() / 3]).unwrap();
    // A PNG whose header claims 100000×100000 pixels.
    let mut huge = std::fs::read(src.join("gray.png")).unwrap();
    huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    std::fs::write(src.join("huge.png"), huge).unwrap();
    std::fs::write(dir.path().join("secret.jpg"), &good).unwrap();
    let csv = "image,caption\n\
ok0.jpg,a first caption\nok0.jpg,a second caption of the same image\nok1.jpg,one\nok2.jpg,two\nok3.jpg,\"three, with a comma\"\n\
gray.png,gray\ndeep.png,sixteen bit\nalpha.png,transparent\nempty.jpg,zero bytes\nnoise.jpg,garbage\ncut.jpg,truncated\nhuge.png,huge\n\
../secret.jpg,escape attempt\n/etc/passwd,absolute\nmissing.jpg,no such file\nok1.jpg,\n";
    std::fs::write(src.join("captions.csv"), csv).unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, err) = prepare(&[
        "--format",
        "captions-csv",
        "--src",
        src.join("captions.csv").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--multi",
        "join",
    ]);
    assert!(ok, "{err}");
    assert!(!err.contains("panicked"));
    let caps: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(out.join("captions.json")).unwrap()).unwrap();
    // Four JPEGs + grayscale + 16-bit + alpha are usable; ok0's two captions are joined.
    assert_eq!(caps.len(), 7, "{caps:?}\n{stdout}");
    assert_eq!(
        caps["ok0"],
        "a first caption. a second caption of the same image."
    );
    let rej = rejected(&out);
    for bad in [
        "empty", "noise", "cut", "huge", "secret", "passwd", "missing",
    ] {
        assert!(rej.contains(bad), "{bad} is listed in rejected.csv:\n{rej}");
    }
    assert!(rej.contains("unsafe path"), "{rej}");
    let img = image::open(out.join("images/alpha.png")).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (32, 32));
    assert_eq!(
        img.get_pixel(5, 5).0,
        [255, 255, 255],
        "fully transparent pixels become white"
    );
    let n: usize = ["train", "val", "test"]
        .iter()
        .map(|s| {
            std::fs::read_to_string(out.join(format!("splits/{s}_ids.txt")))
                .unwrap()
                .lines()
                .filter(|l| !l.is_empty())
                .count()
        })
        .sum();
    assert_eq!(n, 7);
    // Existing output is not overwritten silently.
    let (ok, _, err) = prepare(&[
        "--format",
        "captions-csv",
        "--src",
        src.join("captions.csv").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--force"), "{err}");
    // A header without the needed columns is a clear error.
    std::fs::write(src.join("bad.csv"), "file,text\na.jpg,x\n").unwrap();
    let e = assert_clean_error(
        &[
            "data",
            "prepare",
            "--format",
            "captions-csv",
            "--src",
            src.join("bad.csv").to_str().unwrap(),
            "--out",
            dir.path().join("o2").to_str().unwrap(),
        ],
        "caption",
    );
    assert!(e.contains("bad.csv"));
}

#[test]
fn pairs_keep_an_images_captions_in_one_split() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut csv = String::from("image,caption\n");
    for i in 0..10 {
        jpg(&src.join(format!("p{i}.jpg")), i as u8);
        for k in 0..3 {
            csv.push_str(&format!("p{i}.jpg,caption {k} of picture {i}\n"));
        }
    }
    std::fs::write(src.join("c.csv"), csv).unwrap();
    let out = dir.path().join("out");
    let (ok, _, err) = prepare(&[
        "--format",
        "captions-csv",
        "--src",
        src.join("c.csv").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--multi",
        "pairs",
    ]);
    assert!(ok, "{err}");
    let split = |s: &str| std::fs::read_to_string(out.join(format!("splits/{s}_ids.txt"))).unwrap();
    let (tr, va, te) = (split("train"), split("val"), split("test"));
    assert_eq!(
        tr.lines()
            .chain(va.lines())
            .chain(te.lines())
            .filter(|l| !l.is_empty())
            .count(),
        30
    );
    for i in 0..10 {
        let holders = [&tr, &va, &te]
            .iter()
            .filter(|s| s.lines().any(|l| l.starts_with(&format!("p{i}_"))))
            .count();
        assert_eq!(holders, 1, "image p{i}'s pairs sit in one split");
    }
}

#[test]
fn coco_imagefolder_text_c10_and_art() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // COCO
    let coco = d.join("coco");
    for i in 0..4 {
        png(&coco.join(format!("img/{i}.png")), 24, 24, i as u8 + 1);
    }
    png(&coco.join("other/3.png"), 24, 24, 9);
    let json = serde_json::json!({
        "images": [{"id": 1, "file_name": "img/0.png"}, {"id": 2, "file_name": "img/1.png"}, {"id": 3, "file_name": "img/2.png"}, {"id": 4, "file_name": "img/3.png"}, {"id": 5, "file_name": "other/3.png"}],
        "annotations": [{"image_id": 1, "caption": "zero"}, {"image_id": 2, "caption": "one"}, {"image_id": 3, "caption": "two"}, {"image_id": 4, "caption": "three"}, {"image_id": 5, "caption": "dup"}]
    });
    std::fs::write(coco.join("captions.json"), json.to_string()).unwrap();
    let out = d.join("out_coco");
    let (ok, _, err) = prepare(&[
        "--format",
        "coco",
        "--src",
        coco.join("captions.json").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        rejected(&out).contains("duplicate id"),
        "other/3.png has the same id as img/3.png"
    );

    // Image folder with metadata.jsonl, then with .txt files (one non-UTF-8).
    let f = d.join("folder");
    for i in 0..4 {
        png(&f.join(format!("a{i}.png")), 24, 24, i as u8 + 3);
    }
    std::fs::write(
        f.join("metadata.jsonl"),
        (0..4)
            .map(|i| format!("{{\"file_name\": \"a{i}.png\", \"text\": \"text {i}\"}}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let (ok, _, err) = prepare(&[
        "--format",
        "imagefolder",
        "--src",
        f.to_str().unwrap(),
        "--out",
        d.join("out_f").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    std::fs::remove_file(f.join("metadata.jsonl")).unwrap();
    for i in 0..3 {
        std::fs::write(f.join(format!("a{i}.txt")), format!("caption {i}")).unwrap();
    }
    std::fs::write(f.join("a3.txt"), b"caf\xe9 latin-1").unwrap();
    let (ok, stdout, err) = prepare(&[
        "--format",
        "imagefolder",
        "--src",
        f.to_str().unwrap(),
        "--out",
        d.join("out_t").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("lossily: 1"), "{stdout}");

    // Oxford-102 / CUB layout: ten-ish captions per image, joined.
    let c10 = d.join("flowers");
    for i in 0..4 {
        jpg(&c10.join(format!("jpg/image_{i:05}.jpg")), i as u8);
        std::fs::create_dir_all(c10.join("text_c10/class_00001")).unwrap();
        std::fs::write(
            c10.join(format!("text_c10/class_00001/image_{i:05}.txt")),
            "a flower with pink petals\nthe petals are wide\n",
        )
        .unwrap();
    }
    let out = d.join("out_c10");
    let (ok, _, err) = prepare(&[
        "--format",
        "text-c10",
        "--src",
        c10.to_str().unwrap(),
        "--images",
        c10.join("jpg").to_str().unwrap(),
        "--multi",
        "join",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let caps = std::fs::read_to_string(out.join("captions.json")).unwrap();
    assert!(
        caps.contains("a flower with pink petals. the petals are wide."),
        "{caps}"
    );

    // The art dataset: metadata-composed paragraphs, or supplied descriptions.
    let art = d.join("art");
    for i in 0..4 {
        jpg(&art.join(format!("artwork/{i}.jpg")), i as u8);
    }
    std::fs::write(art.join("artwork_dataset.csv"), "ID,Title,Artist,Year\n0,Sunflowers,Vincent van Gogh,1888\n1,Water Lilies,Claude Monet,1906\n2,The Wave,Hokusai,1831\n3,Untitled,,\n").unwrap();
    std::fs::write(
        art.join("info_dataset.csv"),
        "id,medium,style\n0,oil on canvas,Post-Impressionism\n",
    )
    .unwrap();
    let out = d.join("out_art");
    let (ok, _, err) = prepare(&[
        "--format",
        "art",
        "--src",
        art.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let caps = std::fs::read_to_string(out.join("captions.json")).unwrap();
    assert!(
        caps.contains("Sunflowers")
            && caps.contains("Vincent van Gogh")
            && caps.contains("oil on canvas"),
        "{caps}"
    );
    assert!(std::fs::read_to_string(out.join("metadata.csv"))
        .unwrap()
        .contains("metadata-composed"));
    std::fs::write(
        art.join("captions.jsonl"),
        (0..4)
            .map(|i| {
                format!("{{\"id\": \"{i}\", \"caption\": \"A long description of work {i}.\"}}\n")
            })
            .collect::<String>(),
    )
    .unwrap();
    let out = d.join("out_art2");
    let (ok, _, err) = prepare(&[
        "--format",
        "art",
        "--src",
        art.to_str().unwrap(),
        "--captions",
        art.join("captions.jsonl").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(out.join("captions.json"))
        .unwrap()
        .contains("A long description of work 2."));
    // A prepared real dataset trains a tokenizer like the embedded one.
    train_tokenizer(&out, 64);
}

/// A CMYK JPEG (made with Pillow, which can write one) is decoded to RGB.
#[test]
fn cmyk_jpeg_is_converted() {
    let Some(py) = python() else {
        eprintln!("SKIPPED: EKPHRASIS_PYTHON not set (run through `make test`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let script = "import sys\nfrom PIL import Image\nfor i in range(4):\n    Image.new('CMYK', (30, 20), (0, 255, 255, 0)).save(f'{sys.argv[1]}/c{i}.jpg')";
    let out = std::process::Command::new(py)
        .args(["-c", script, src.to_str().unwrap()])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "SKIPPED: Pillow could not write a CMYK JPEG: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    std::fs::write(
        src.join("captions.csv"),
        "image,caption\nc0.jpg,red\nc1.jpg,red\nc2.jpg,red\nc3.jpg,red\n",
    )
    .unwrap();
    let o = dir.path().join("out");
    let (ok, _, err) = prepare(&[
        "--format",
        "captions-csv",
        "--src",
        src.join("captions.csv").to_str().unwrap(),
        "--out",
        o.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let px = image::open(o.join("images/c0.png"))
        .unwrap()
        .to_rgb8()
        .get_pixel(10, 10)
        .0;
    assert!(
        px[0] > 200 && px[1] < 60 && px[2] < 60,
        "CMYK (0, 100 %, 100 %, 0) is red, got {px:?}"
    );
}

/// Four readable images with captions: enough for a dataset beside what a test adds.
fn four_good_images(src: &Path) {
    for i in 0..4u8 {
        png(&src.join(format!("ok{i}.png")), 12, 12, i + 1);
        std::fs::write(src.join(format!("ok{i}.txt")), "fine").unwrap();
    }
}

fn imagefolder(src: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut a = vec![
        "--format",
        "imagefolder",
        "--src",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    prepare(&a)
}

/// `img` and `img_1` are two pictures: each lands in exactly one split, and every kept
/// item in one.
#[test]
fn ids_that_look_like_pairs_are_split_as_the_images_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for i in 0..15u8 {
        for name in [format!("img{i}"), format!("img{i}_1"), format!("img{i}_2")] {
            png(&src.join(format!("{name}.png")), 12, 12, i * 3 + 1);
            std::fs::write(src.join(format!("{name}.txt")), format!("picture {name}")).unwrap();
        }
    }
    let out = dir.path().join("out");
    let (ok, _, err) = imagefolder(&src, &out, &[]);
    assert!(ok, "{err}");
    let mut seen = std::collections::HashMap::new();
    for split in ["train", "val", "test"] {
        for id in std::fs::read_to_string(out.join(format!("splits/{split}_ids.txt")))
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
        {
            assert!(
                seen.insert(id.to_string(), split).is_none(),
                "{id} is in two splits"
            );
        }
    }
    assert_eq!(seen.len(), 45, "every image in exactly one split");
}

/// An unreadable file does not claim an id: the readable one of the same name is kept.
#[test]
fn a_duplicate_id_goes_to_the_first_file_that_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    four_good_images(&src);
    std::fs::write(src.join("dup.jpg"), b"broken bytes").unwrap();
    std::fs::write(src.join("dup.txt"), "the duplicated one").unwrap();
    png(&src.join("dup.png"), 12, 12, 99);
    png(&src.join("twice.jpg"), 12, 12, 50);
    png(&src.join("twice.png"), 12, 12, 51);
    std::fs::write(src.join("twice.txt"), "two good files").unwrap();
    let out = dir.path().join("out");
    let (ok, _, err) = imagefolder(&src, &out, &[]);
    assert!(ok, "{err}");
    assert!(
        out.join("images/dup.png").exists(),
        "the readable dup was kept"
    );
    let r = rejected(&out);
    assert!(
        r.contains("dup.jpg") && r.contains("unreadable image"),
        "{r}"
    );
    assert!(!r.contains("dup.png"), "{r}");
    assert!(r.contains("twice.png,duplicate id: kept twice.jpg"), "{r}");
}

/// Links out of the source folder and files that are not regular files are rejected,
/// without reading them.
#[test]
fn links_out_of_the_folder_and_fifos_are_rejected_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    four_good_images(&src);
    png(&dir.path().join("private.png"), 12, 12, 7);
    std::os::unix::fs::symlink(dir.path().join("private.png"), src.join("leak.png")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", src.join("endless.png")).unwrap();
    png(&src.join("inside.png"), 12, 12, 8);
    std::os::unix::fs::symlink(src.join("inside.png"), src.join("alias.png")).unwrap();
    let fifo = src.join("pipe.png");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for n in ["leak", "endless", "pipe", "alias", "inside"] {
        std::fs::write(src.join(format!("{n}.txt")), "caption").unwrap();
    }
    let out = dir.path().join("out");
    let t0 = std::time::Instant::now();
    let (ok, _, err) = imagefolder(&src, &out, &[]);
    assert!(ok, "{err}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(30),
        "a FIFO or device hung prepare"
    );
    let r = rejected(&out);
    assert!(
        r.contains("leak.png") && r.contains("outside the data folder"),
        "{r}"
    );
    assert!(r.contains("endless.png") && r.contains("pipe.png"), "{r}");
    assert!(r.contains("not a regular file"), "{r}");
    // Three hostile files refused (a link out, a device, a FIFO), one inner link taken.
    eprintln!("FUZZ|links, devices and FIFOs in a source folder|4|3|1|0|0");
    assert!(
        out.join("images/alias.png").exists(),
        "a link inside the folder is fine"
    );
}

/// A failed `--force` leaves the old dataset whole (its tokenizer included); a good one
/// replaces it.
#[test]
fn force_replaces_a_dataset_only_once_the_new_one_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    four_good_images(&src);
    let out = dir.path().join("out");
    let (ok, _, err) = imagefolder(&src, &out, &[]);
    assert!(ok, "{err}");
    std::fs::write(out.join("tokenizer.json"), "{}").unwrap();
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("x.png"), b"not an image").unwrap();
    std::fs::write(bad.join("x.txt"), "caption").unwrap();
    let (ok, _, err) = imagefolder(&bad, &out, &["--force"]);
    assert!(!ok && err.contains("usable items"), "{err}");
    assert!(
        out.join("tokenizer.json").exists(),
        "the old dataset is intact"
    );
    assert_eq!(std::fs::read_dir(out.join("images")).unwrap().count(), 4);
    assert!(!dir.path().join("out.partial").exists());
    let (ok, _, err) = imagefolder(&src, &out, &["--force"]);
    assert!(ok, "{err}");
    assert!(
        !out.join("tokenizer.json").exists(),
        "a good --force replaces the dataset"
    );
    assert!(!dir.path().join("out.replaced").exists());
    for size in ["0", "100000"] {
        let o = dir.path().join(format!("s{size}"));
        assert_clean_error(
            &[
                "data",
                "prepare",
                "--format",
                "imagefolder",
                "--src",
                src.to_str().unwrap(),
                "--out",
                o.to_str().unwrap(),
                "--size",
                size,
            ],
            &format!("--size {size}"),
        );
    }
}

/// A COCO file that repeats an image id is refused naming both entries; annotations of
/// images it does not list are counted in a warning, not dropped in silence.
#[test]
fn coco_repeated_image_ids_and_orphan_annotations_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("coco");
    for i in 0..4u8 {
        png(&src.join(format!("im{i}.png")), 12, 12, i + 1);
    }
    let coco = |images: &str| {
        format!(
            "{{\"images\": [{images}], \"annotations\": [{{\"image_id\": 0, \"caption\": \"a\"}}, {{\"image_id\": 1, \"caption\": \"b\"}}, {{\"image_id\": 2, \"caption\": \"c\"}}, {{\"image_id\": 3, \"caption\": \"d\"}}, {{\"image_id\": 77, \"caption\": \"nobody\"}}]}}"
        )
    };
    let listed = (0..4)
        .map(|i| format!("{{\"id\": {i}, \"file_name\": \"im{i}.png\"}}"))
        .collect::<Vec<_>>();
    let json = src.join("captions.json");
    std::fs::write(&json, coco(&listed.join(", "))).unwrap();
    let coco_prepare = |out: &str| {
        let out = dir.path().join(out);
        prepare(&[
            "--format",
            "coco",
            "--src",
            json.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (ok, _, err) = coco_prepare("out");
    assert!(ok, "{err}");
    assert!(err.contains("1 annotations name an image_id"), "{err}");
    let dup = format!(
        "{}, {{\"id\": 2, \"file_name\": \"im3.png\"}}",
        listed[..3].join(", ")
    );
    std::fs::write(&json, coco(&dup)).unwrap();
    let (ok, _, err) = coco_prepare("out2");
    assert!(!ok && err.contains("repeats the id 2 of im2.png"), "{err}");
}

/// On a dataset of images and captions alone, every option that reads the embedded set's
/// scene facts is refused by name before anything trains: the demo configs (all
/// scene-supervised) on a prepared image folder.
#[test]
fn options_that_read_scene_facts_are_refused_on_a_real_dataset_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    for i in 0..12u8 {
        png(&src.join(format!("p{i}.png")), 20, 20, i + 1);
        std::fs::write(
            src.join(format!("p{i}.txt")),
            format!("A drawing of thing number {i}, red and round, on a white page."),
        )
        .unwrap();
    }
    let out = dir.path().join("real");
    let (ok, _, err) = imagefolder(&src, &out, &[]);
    assert!(ok, "{err}");
    train_tokenizer(&out, 64);
    let d = out.to_str().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    for (stage, file, option) in [
        (
            "captioner",
            "scenes/captioner.yaml",
            "model.attribute_weight",
        ),
        ("t2i", "scenes/t2i-vae.yaml", "model.facts"),
        ("unified", "scenes/unified.yaml", "model.facts"),
        ("probe", "demo/probe.yaml", "the attribute probe"),
    ] {
        let cfg = root.join(file);
        let run_dir = dir.path().join(stage);
        let t0 = std::time::Instant::now();
        let err = assert_clean_error(
            &[
                "train",
                stage,
                "-c",
                cfg.to_str().unwrap(),
                "--set",
                &format!("data={d}"),
                "--run",
                run_dir.to_str().unwrap(),
                "--device",
                "cpu",
            ],
            "reads the embedded set's scene facts",
        );
        assert!(err.contains(option), "{stage}: {err}");
        assert!(
            t0.elapsed().as_secs() < 20,
            "{stage}: refused only after work"
        );
        assert!(
            !run_dir.join("checkpoints").exists(),
            "{stage}: trained before refusing"
        );
    }
}

/// With several captions per image (`--multi pairs`), `eval captioner` captions each
/// image once and scores it against all of its captions (`images.json` says which
/// items share an image).
#[test]
fn pairs_are_evaluated_once_per_image_against_all_their_captions() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut csv = String::from("image,caption\n");
    for i in 0..20 {
        jpg(&src.join(format!("p{i}.jpg")), i as u8 * 11);
        for k in 0..3 {
            csv.push_str(&format!(
                "p{i}.jpg,A small drawing number {i} seen the {k} way. It is red.\n"
            ));
        }
    }
    std::fs::write(src.join("c.csv"), csv).unwrap();
    let out = dir.path().join("out");
    let d = out.to_str().unwrap();
    let (ok, _, err) = prepare(&[
        "--format",
        "captions-csv",
        "--src",
        src.join("c.csv").to_str().unwrap(),
        "--out",
        d,
        "--multi",
        "pairs",
    ]);
    assert!(ok, "{err}");
    let groups: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_str(&std::fs::read_to_string(out.join("images.json")).unwrap()).unwrap();
    assert_eq!(groups.len(), 20);
    assert!(groups.values().all(|items| items.len() == 3));
    train_tokenizer(&out, 64);
    let cfg = tiny_captioner_config(dir.path(), &out, 2);
    let run_dir = dir.path().join("cap");
    let r = run_dir.to_str().unwrap();
    let (ok, _, err) = run(&[
        "train",
        "captioner",
        "-c",
        cfg.to_str().unwrap(),
        "--set",
        "model.attribute_weight=0",
        "--set",
        "model.attribute_context=false",
        "--set",
        "model.max_len=64",
        "--run",
        r,
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&[
        "eval",
        "captioner",
        "--run",
        r,
        "--split",
        "train",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let m: std::collections::BTreeMap<String, f64> = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("eval_train/metrics.json")).unwrap(),
    )
    .unwrap();
    let train_items = std::fs::read_to_string(out.join("splits/train_ids.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(m["references_per_image"], 3.0, "{m:?}");
    assert_eq!(m["images"] as usize * 3, train_items, "{m:?}");
}

/// `--splits DIR` takes the train/val/test lists as given (ids or file names), keeps an
/// image's pairs together, and refuses a missing list or an image in two lists.
#[test]
fn given_splits_are_used_as_listed_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let mut csv = String::from("image,caption\n");
    for i in 0..10 {
        jpg(&src.join(format!("p{i}.jpg")), i as u8);
        for k in 0..2 {
            csv.push_str(&format!("p{i}.jpg,caption {k} of picture {i}\n"));
        }
    }
    std::fs::write(src.join("c.csv"), csv).unwrap();
    let splits = dir.path().join("splits");
    std::fs::create_dir_all(&splits).unwrap();
    std::fs::write(
        splits.join("train.txt"),
        "p0.jpg\np1\np2\np3\np4\np5\nnot_here.jpg\n",
    )
    .unwrap();
    std::fs::write(splits.join("val.txt"), "# a comment\np6\np7\n").unwrap();
    let out = dir.path().join("out");
    let args = |out: &Path| {
        vec![
            "--format".to_string(),
            "captions-csv".into(),
            "--src".into(),
            src.join("c.csv").to_str().unwrap().into(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "--multi".into(),
            "pairs".into(),
            "--splits".into(),
            splits.to_str().unwrap().into(),
        ]
    };
    // No test list: refused before any image is decoded.
    let a = args(&out);
    let (ok, _, err) = prepare(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok && err.contains("no test_ids.txt or test.txt"), "{err}");
    assert!(!out.exists());
    std::fs::write(splits.join("test_ids.txt"), "p8\np9\n").unwrap();
    let (ok, _, err) = prepare(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    assert!(
        err.contains("1 listed lines name no prepared image"),
        "{err}"
    );
    let read = |s: &str| std::fs::read_to_string(out.join(format!("splits/{s}_ids.txt"))).unwrap();
    assert_eq!(read("val"), "p6_0\np6_1\np7_0\np7_1\n");
    assert_eq!(read("test"), "p8_0\np8_1\np9_0\np9_1\n");
    assert_eq!(read("train").lines().count(), 12);
    // An image in two lists is refused, naming the file and line.
    std::fs::write(splits.join("test_ids.txt"), "p8\np1.jpg\n").unwrap();
    let b = args(&dir.path().join("out2"));
    let (ok, _, err) = prepare(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !ok && err.contains("test_ids.txt:2: p1 is already listed"),
        "{err}"
    );
}
