//! The English→Chichewa task: King James verses paired with Chichewa verses by book,
//! chapter and verse, split deterministically into train and test.
//!
//! In: `kjv.jsonl` (lines `{"book","chapter","verse","text"}`, books in canonical
//! order) and the Chichewa folder `<book 1-66>/<chapter>.json` (a JSON array of verse
//! strings). Out: [`Pair`]s, and prompt/completion JSONL for `neft train`.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub citation: String,
    pub en: String,
    pub ny: String,
}

#[derive(Deserialize)]
struct KjvLine {
    book: String,
    chapter: usize,
    verse: usize,
    text: String,
    #[serde(default)]
    citation: String,
}

/// Every verse present in both translations, in canonical order.
pub fn load_pairs(kjv: &Path, chichewa: &Path) -> anyhow::Result<Vec<Pair>> {
    let text = std::fs::read_to_string(kjv).with_context(|| format!("reading {}", kjv.display()))?;
    let mut books: Vec<String> = vec![];
    let mut chapters: HashMap<(usize, usize), Vec<String>> = HashMap::new();
    let mut pairs = vec![];
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: KjvLine = serde_json::from_str(line).with_context(|| format!("{}:{}", kjv.display(), i + 1))?;
        if books.last() != Some(&v.book) {
            books.push(v.book.clone());
        }
        let book = books.len();
        let verses = match chapters.entry((book, v.chapter)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let path = chichewa.join(book.to_string()).join(format!("{}.json", v.chapter));
                let list: Vec<String> = match std::fs::read_to_string(&path) {
                    Ok(t) => {
                        serde_json::from_str(&t).with_context(|| format!("{}: not a list of verses", path.display()))?
                    }
                    Err(_) => vec![],
                };
                e.insert(list)
            }
        };
        let Some(ny) = verses.get(v.verse.wrapping_sub(1)).map(|s| s.trim()).filter(|s| !s.is_empty()) else {
            continue;
        };
        let citation = if v.citation.is_empty() { format!("{} {}:{}", v.book, v.chapter, v.verse) } else { v.citation };
        pairs.push(Pair { citation, en: v.text.trim().to_string(), ny: ny.to_string() });
    }
    if books.len() != 66 {
        bail!("{}: expected the 66 books of the King James Bible, found {}", kjv.display(), books.len());
    }
    Ok(pairs)
}

/// A verse goes to the test set when a hash of its citation falls in the first
/// `test_per_mille` of 1000 buckets: stable across runs, machines and orderings.
pub fn is_test(p: &Pair, test_per_mille: u64) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in p.citation.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h % 1000 < test_per_mille
}

pub const PROMPT_PREFIX: &str = "Translate English to Chichewa: ";
pub const PROMPT_SUFFIX: &str = "\nChichewa:";

pub fn prompt(en: &str) -> String {
    format!("{PROMPT_PREFIX}{en}{PROMPT_SUFFIX}")
}

/// Writes `{"prompt","completion"}` lines (atomically).
pub fn write_jsonl(pairs: &[&Pair], path: &Path) -> anyhow::Result<()> {
    crate::fsutil::write_atomic(path, |w| {
        for p in pairs {
            let line = serde_json::json!({ "prompt": prompt(&p.en), "completion": format!(" {}", p.ny) });
            writeln!(w, "{line}")?;
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))
}
