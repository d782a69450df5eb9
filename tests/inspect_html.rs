//! `neft inspect --html` as a user sees it: the page is rendered by headless Chromium
//! (installed by `bash .ci/setup`), its text checked against the plan, and a
//! screenshot checked for size and content. The page must need no network.

mod train_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use train_support::*;

/// A hung browser must fail the test, not hang CI.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);
const WINDOW: (u32, u32) = (1280, 2400);
/// A screenshot of a page with one heading is about 15 kB at this size; the reports,
/// with tables and pictures, are over 150 kB.
const NOT_BLANK_BYTES: u64 = 60_000;

fn chromium_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("chromium")).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "`chromium` is not on PATH: this test renders the HTML report in headless Chromium. \
             `bash .ci/setup` installs it (the Debian package `chromium`)."
        )
    })
}

/// Runs headless Chromium on `page` with `args`; stdout goes to `stdout_file`. Killed
/// (with its helper processes) after [`CHROMIUM_TIMEOUT`].
fn chromium(page: &Path, args: &[String], stdout_file: &Path) {
    use std::os::unix::process::CommandExt;
    let profile = tempfile::tempdir().unwrap();
    let stderr_file = stdout_file.with_extension("stderr");
    let mut child = Command::new(chromium_path())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
        .arg("--disable-dev-shm-usage")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(stdout_file).unwrap())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > CHROMIUM_TIMEOUT {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} ran past {CHROMIUM_TIMEOUT:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(&stderr_file).unwrap_or_default();
    assert!(status.success(), "chromium {args:?} failed ({status}): {err}");
}

/// The page as Chromium parsed it, and the PNG screenshot's width, height and size.
fn render(page: &Path) -> (String, (u32, u32), u64) {
    let dir = page.parent().unwrap();
    let dom = dir.join("dom.html");
    chromium(page, &["--dump-dom".into()], &dom);
    let png = dir.join("shot.png");
    chromium(page, &[format!("--screenshot={}", png.display())], &dir.join("shot.log"));
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (std::fs::read_to_string(dom).unwrap(), (be(&bytes[16..20]), be(&bytes[20..24])), bytes.len() as u64)
}

/// The page's visible text: tags dropped, entities of the few escaped characters decoded.
fn text_of(dom: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in dom.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Nothing a browser would fetch: no scripts, links, stylesheets, images, frames or
/// fonts from anywhere; the only URL is the SVG namespace (an identifier, never fetched).
fn assert_self_contained(html: &str) {
    let lower = html.to_lowercase();
    for bad in ["<script", "<link", "<img", "<iframe", "<object", "<embed", "@import", "@font-face", " src=", " href="]
    {
        assert!(!lower.contains(bad), "the page contains {bad:?}");
    }
    let urls = lower.matches("http").count();
    let namespaces = lower.matches("xmlns=\"http://www.w3.org/2000/svg\"").count();
    assert_eq!(urls, namespaces, "the page names a URL other than the SVG namespace");
    let refs: Vec<&str> = lower.match_indices("url(").map(|(i, _)| &lower[i..i + 5]).collect();
    assert!(refs.iter().all(|r| *r == "url(#"), "url() to something outside the page");
}

fn assert_screenshot(size: (u32, u32), bytes: u64) {
    assert_eq!(size, WINDOW, "screenshot size");
    assert!(bytes > NOT_BLANK_BYTES, "the screenshot looks blank ({bytes} bytes)");
}

#[test]
fn the_artifact_report_renders_in_chromium_with_the_plan_the_heat_map_and_the_loss_curve() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let neurons = [("val_109", 1, vec![0, 5, 9]), ("val_244", 1, vec![3, 10, 40, 41]), ("val_381", 1, vec![1, 2])];
    let out = compile_llama(dir, "art", &neurons, &["--lr", "1e-2"]);

    // Before training the page says so instead of drawing an empty plot.
    neft_ok(&["inspect", "art", "--html", "untrained.html"], dir);
    let untrained = std::fs::read_to_string(dir.join("untrained.html")).unwrap();
    assert!(untrained.contains("Not trained yet") && !untrained.contains("loss per step"));

    write_lines(&dir.join("train.jsonl"), &pattern_lines(24, 16, 8, 1));
    neft_ok(&["train", "art", "--data", "train.jsonl", "--batch", "4", "--threads", "1", "--steps", "12"], dir);
    let shown = neft_ok(&["inspect", "art", "--html", "report.html"], dir);
    assert!(stdout(&shown).contains("report.html"));
    let page = dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_self_contained(&html);
    let leftovers: Vec<_> =
        std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    assert!(!leftovers.iter().any(|n| n.contains(".tmp")), "temporary file left behind: {leftovers:?}");

    let (dom, size, bytes) = render(&page);
    let text = text_of(&dom);
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
    let trainable = plan["counts"]["trainable_params"].as_u64().unwrap();
    assert_eq!(trainable, 3 * 32 + 4 * 32 + 2 * 64);
    for want in [
        "Plan",
        &format!("{trainable} trainable of {}", plan["counts"]["model_params"]),
        "Trainable tensors",
        "block 0 / mlp.up",
        "4/64",
        "Where the selected neurons are",
        "block 1",
        "mlp.down",
        "Training",
        "12 steps, loss",
        "neft train: loss per step",
        // The layer with the most selected neurons, before and after the rewrite.
        "One rewritten layer: block 0 / mlp.up (val_244), 4 of 64 neurons",
        "before: val_244 in the source model",
        "after: val_244.rows in train_step.onnx",
        "MatMul 'node_linear_5.selected' (split_rows)",
        "trainable input",
        "What each pass added to the train step",
        "autodiff",
    ] {
        assert!(text.contains(want), "the rendered page lacks {want:?}:\n{text}");
    }
    assert_eq!(dom.matches("<svg").count(), 4, "heat map, loss curve, before, after");
    assert_screenshot(size, bytes);
    eprintln!("artifact report: rendered and checked in {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn a_plain_model_report_shows_its_layers_op_mix_and_first_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = llama_path();
    neft_ok(&["inspect", model.to_str().unwrap(), "--html", "model.html"], dir);
    let page = dir.join("model.html");
    assert_self_contained(&std::fs::read_to_string(&page).unwrap());
    let summary: serde_json::Value =
        serde_json::from_slice(&neft_ok(&["inspect", model.to_str().unwrap(), "--json"], dir).stdout).unwrap();

    let (dom, size, bytes) = render(&page);
    let text = text_of(&dom);
    for want in [
        &format!("{} in {} initializers", summary["parameters"]["count"], summary["parameters"]["tensors"]),
        "15 layers with 640 neurons",
        "input_ids",
        "[batch, seq]",
        "block 1 / mlp.down",
        "val_381",
        "Op histogram",
        &format!("MatMul {}", summary["op_histogram"]["MatMul"]),
        "A trainable layer: block 0 / attn.q (val_109), 32 neurons",
        "weight of a trainable layer",
    ] {
        assert!(text.contains(want), "the rendered page lacks {want:?}:\n{text}");
    }
    assert_eq!(dom.matches("<svg").count(), 1, "the first layer's neighbourhood");
    assert_screenshot(size, bytes);

    // Another layer on request; a name that is no layer is an error naming the layers.
    neft_ok(&["inspect", model.to_str().unwrap(), "--html", "up.html", "--around", "block 1 / mlp.up"], dir);
    assert!(std::fs::read_to_string(dir.join("up.html")).unwrap().contains("block 1 / mlp.up (val_380)"));
    let bad = neft(&["inspect", model.to_str().unwrap(), "--html", "x.html", "--around", "nope"], dir);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("--around nope") && stderr(&bad).contains("val_109 (block 0 / attn.q)"));
    assert!(!dir.join("x.html").exists());
}
