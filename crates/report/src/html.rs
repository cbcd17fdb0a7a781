//! `report.html`: one self-contained page (no network) with the summary
//! table, the plots inlined as SVG and a browser of the judged samples,
//! which travel as JSON in a `<script type="application/json">` tag and are
//! rendered by a little inline JavaScript.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::format::{final_step, Experiment, SampleRecord};
use crate::tables::{groups, pretty, summary_cells, Cell, SeedCell, Summary};

/// Records of non-final steps embedded per run, at most (the final step is
/// embedded whole): keeps the page small for long runs.
pub const MAX_OTHER_STEPS_RECORDS: usize = 300;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON that is safe inside a `<script>` element: every `<` (which JSON
/// only has inside strings) becomes `\u003c`, so neither `</script>` nor
/// `<!--` in a prompt can end or confuse the element.
pub fn script_json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string(value)?.replace('<', "\\u003c"))
}

#[derive(Serialize)]
struct Embedded {
    columns: Vec<String>,
    /// Distinct `(prompt, gold)` pairs; records point into this list, so
    /// prompts shared by runs, steps and seeds are stored once.
    prompts: Vec<(String, Option<String>)>,
    runs: Vec<EmbeddedRun>,
}

#[derive(Serialize)]
struct EmbeddedRun {
    run: String,
    estimator: String,
    #[serde(rename = "final")]
    final_step: Option<usize>,
    steps: Vec<usize>,
    seeds: Vec<Option<u64>>,
    /// Records per step on disk, for "showing k of n".
    totals: BTreeMap<usize, usize>,
    records: Vec<EmbeddedRecord>,
}

#[derive(Serialize)]
struct EmbeddedRecord {
    seed: Option<u64>,
    step: usize,
    /// The held-out prompt's index and this completion's index in it.
    pi: usize,
    si: usize,
    /// Index into `prompts`.
    p: usize,
    response: String,
    /// Parallel to `columns`.
    values: Vec<Option<f64>>,
}

fn embedded(exp: &Experiment) -> Embedded {
    let rows = &exp.runs.rows;
    let mut columns: Vec<String> = Vec::new();
    for r in rows {
        for c in &r.columns {
            if !columns.contains(c) {
                columns.push(c.clone());
            }
        }
    }
    let mut prompts: Vec<(String, Option<String>)> = Vec::new();
    let mut prompt_ids: BTreeMap<(String, Option<String>), usize> = BTreeMap::new();
    let mut runs = Vec::new();
    for (run, idx) in groups(rows) {
        let mut records: Vec<&SampleRecord> = Vec::new();
        let mut final_at: Option<usize> = None;
        let mut seeds = Vec::new();
        for &i in &idx {
            let recs = exp.records_of(&rows[i]);
            final_at = final_at.max(final_step(&rows[i], &recs));
            seeds.push(rows[i].seed);
            records.extend(recs);
        }
        if records.is_empty() {
            continue;
        }
        let mut totals: BTreeMap<usize, usize> = BTreeMap::new();
        for r in &records {
            *totals.entry(r.step).or_default() += 1;
        }
        let others = totals.keys().filter(|&&s| Some(s) != final_at).count();
        let quota = MAX_OTHER_STEPS_RECORDS / others.max(1);
        let mut taken: BTreeMap<usize, usize> = BTreeMap::new();
        let mut kept = Vec::new();
        for r in records {
            let n = taken.entry(r.step).or_default();
            if Some(r.step) != final_at && *n >= quota {
                continue;
            }
            *n += 1;
            let key = (r.prompt.clone(), r.gold.clone());
            let p = *prompt_ids.entry(key.clone()).or_insert_with(|| {
                prompts.push(key);
                prompts.len() - 1
            });
            kept.push(EmbeddedRecord {
                seed: r.seed,
                step: r.step,
                pi: r.prompt_index,
                si: r.sample,
                p,
                response: r.response.clone(),
                values: columns
                    .iter()
                    .map(|c| r.columns.get(c).copied().flatten())
                    .collect(),
            });
        }
        runs.push(EmbeddedRun {
            run,
            estimator: rows[idx[0]].estimator.clone(),
            final_step: final_at,
            steps: totals.keys().copied().collect(),
            seeds,
            totals,
            records: kept,
        });
    }
    Embedded {
        columns,
        prompts,
        runs,
    }
}

/// The summary as an HTML table: like summary.md, with each interval on a
/// second line of its cell so the table stays narrow.
fn summary_table(s: &Summary) -> String {
    let (header, rows) = summary_cells(s);
    let mut out = String::from("<div class=\"scroll\"><table class=\"summary\">\n<thead><tr>");
    for (i, h) in header.iter().enumerate() {
        let class = if i < 2 { "" } else { " class=\"num\"" };
        out.push_str(&format!("<th{class}>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (row, cells) in s.rows.iter().zip(&rows) {
        let class = if matches!(row.seed, SeedCell::MeanOf(_)) {
            " class=\"agg\""
        } else {
            ""
        };
        out.push_str(&format!("<tr{class}>"));
        for (i, c) in cells.iter().take(5).enumerate() {
            let class = if i < 2 { "" } else { " class=\"num\"" };
            out.push_str(&format!("<td{class}>{}</td>", escape(c)));
        }
        for cell in &row.cells {
            let text = match cell {
                Cell::Est(e) if !e.mean.is_nan() => format!(
                    "{}<br><span class=\"ci\">[{}, {}]</span>",
                    pretty(e.mean),
                    pretty(e.lo),
                    pretty(e.hi)
                ),
                Cell::Est(_) | Cell::Empty => String::new(),
                Cell::Value(v) => pretty(*v),
            };
            out.push_str(&format!("<td class=\"num\">{text}</td>"));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table></div>\n");
    out
}

/// The whole page. `plots` are `(caption, inline SVG)`.
pub fn report_html(
    exp: &Experiment,
    summary: &Summary,
    plots: &[(String, String)],
) -> anyhow::Result<String> {
    let runs = &exp.runs;
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str(&format!("<title>{}</title>\n", escape(&runs.experiment)));
    h.push_str(&format!("<style>\n{CSS}</style>\n</head>\n<body>\n"));
    h.push_str(&format!("<h1>{}</h1>\n", escape(&runs.experiment)));
    if let Some(d) = &runs.description {
        h.push_str(&format!("<p class=\"description\">{}</p>\n", escape(d)));
    }
    let seeds: Vec<String> = runs.seeds.iter().map(u64::to_string).collect();
    h.push_str(&format!(
        "<dl class=\"facts\"><dt>machine</dt><dd>{}</dd><dt>seeds</dt><dd>{}</dd></dl>\n",
        escape(&runs.machine),
        escape(&seeds.join(", "))
    ));
    h.push_str("<h2>Summary</h2>\n");
    h.push_str(
        "<p class=\"note\">Per-completion columns: mean at the final evaluation step with a 95% \
         bootstrap interval over prompts; <em>mean of N</em> rows: mean across seeds with a \
         95% Student-t interval. <code>win_*</code>: win rate against gold, ties count half.</p>\n",
    );
    h.push_str(&summary_table(summary));
    if !plots.is_empty() {
        h.push_str("<h2>Plots</h2>\n");
        for (caption, svg) in plots {
            h.push_str(&format!(
                "<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
                escape(caption)
            ));
        }
    }
    h.push_str("<h2>Judged samples</h2>\n");
    h.push_str("<ul id=\"run-list\"></ul>\n");
    h.push_str(concat!(
        "<div class=\"controls\">",
        "<label>run <select id=\"run\"></select></label> ",
        "<label>step <select id=\"step\"></select></label> ",
        "<label>seed <select id=\"seed\"></select></label> ",
        "<label>filter <input id=\"filter\" type=\"search\" placeholder=\"text in prompt, completion or gold\"></label>",
        "</div>\n<p id=\"shown\" class=\"note\"></p>\n<div id=\"samples\"></div>\n",
        "<noscript><p>The sample browser needs JavaScript.</p></noscript>\n",
    ));
    if let Some(m) = &exp.manifest {
        h.push_str(&format!(
            "<details><summary>manifest.resolved.toml</summary><pre>{}</pre></details>\n",
            escape(m)
        ));
    }
    h.push_str(&format!(
        "<script type=\"application/json\" id=\"samples-data\">{}</script>\n",
        script_json(&embedded(exp))?
    ));
    h.push_str(&format!("<script>\n{JS}</script>\n</body>\n</html>\n"));
    Ok(h)
}

const CSS: &str = r#"body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1280px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
.description { color: #444; margin-top: 0; }
.facts dt { font-weight: 600; float: left; clear: left; width: 6em; }
.facts dd { margin-left: 7em; }
.note { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.88em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.agg td { font-weight: 600; background: #f7f7fb; }
.scroll { overflow-x: auto; max-width: 100%; }
.ci { color: #777; font-size: 0.85em; }
td { vertical-align: top; }
figure { margin: 1em 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
#run-list { columns: 2; font-size: 0.9em; }
.controls { display: flex; gap: 1em; flex-wrap: wrap; align-items: center; margin: 0.5em 0; }
.controls input { width: 22em; }
.card { border: 1px solid #ddd; border-radius: 6px; margin: 0.8em 0; padding: 0.6em 0.8em; }
.meta { color: #666; font-size: 0.85em; margin-bottom: 0.3em; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0.2em 0; font-size: 0.9em; background: #fafafa; padding: 0.4em; border-radius: 4px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 0.8em; }
.pair h4 { margin: 0.3em 0 0; font-size: 0.85em; color: #555; }
.vals { margin-top: 0.4em; }
button { margin: 0.5em 0; }
"#;

/// Renders the run list and the sample cards with DOM calls (`textContent`
/// only: nothing from the data is parsed as HTML).
const JS: &str = r#"(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("samples-data").textContent);
  var runSel = document.getElementById("run"), stepSel = document.getElementById("step");
  var seedSel = document.getElementById("seed"), filter = document.getElementById("filter");
  var out = document.getElementById("samples"), shown = document.getElementById("shown");
  var PAGE = 100, limit = PAGE;
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function option(sel, value, label) {
    var o = el("option", label); o.value = value; sel.appendChild(o);
  }
  function fmt(v) {
    if (v === null || v === undefined) return "";
    return Number.isInteger(v) ? String(v) : v.toFixed(4);
  }
  var list = document.getElementById("run-list");
  data.runs.forEach(function (r, i) {
    option(runSel, String(i), r.run);
    var li = el("li", r.run + " (" + r.estimator + "): " + r.records.length +
      " records, final step " + (r.final === null ? "-" : r.final));
    li.setAttribute("data-run", r.run);
    list.appendChild(li);
  });
  // Open on the first trained run rather than the prior.
  var first = data.runs.findIndex(function (r) { return r.run !== "prior"; });
  if (first > 0) runSel.value = String(first);
  function run() { return data.runs[Number(runSel.value)]; }
  function fillSteps() {
    var r = run();
    stepSel.textContent = ""; seedSel.textContent = "";
    if (!r) return;
    r.steps.forEach(function (s) { option(stepSel, String(s), String(s) + (s === r.final ? " (final)" : "")); });
    if (r.final !== null) stepSel.value = String(r.final);
    option(seedSel, "all", "all");
    r.seeds.forEach(function (s) { option(seedSel, String(s), s === null ? "-" : String(s)); });
  }
  function render() {
    out.textContent = "";
    var r = run();
    if (!r) { shown.textContent = "No judged samples."; return; }
    var step = Number(stepSel.value), seed = seedSel.value, q = filter.value.toLowerCase();
    var recs = r.records.filter(function (x) {
      if (x.step !== step) return false;
      if (seed !== "all" && String(x.seed) !== seed) return false;
      if (!q) return true;
      var p = data.prompts[x.p];
      return (p[0] + "\n" + x.response + "\n" + (p[1] || "")).toLowerCase().indexOf(q) >= 0;
    });
    recs.sort(function (a, b) { return a.pi - b.pi || (a.seed || 0) - (b.seed || 0) || a.si - b.si; });
    var embedded = r.records.filter(function (x) { return x.step === step; }).length;
    var total = r.totals[String(step)] || 0;
    shown.textContent = recs.length + " matching of " + embedded + " embedded" +
      (embedded < total ? " (" + total + " on disk; the page keeps a sample of non-final steps)" : "") + ".";
    recs.slice(0, limit).forEach(function (x) {
      var p = data.prompts[x.p], card = el("div", null, "card");
      card.appendChild(el("div", "prompt " + x.pi + " · sample " + x.si + " · seed " +
        (x.seed === null ? "-" : x.seed) + " · step " + x.step, "meta"));
      card.appendChild(el("pre", p[0], "prompt"));
      var pair = el("div", null, "pair"), a = el("div"), g = el("div");
      a.appendChild(el("h4", "completion (" + r.run + ")")); a.appendChild(el("pre", x.response, "response"));
      g.appendChild(el("h4", "gold")); g.appendChild(el("pre", p[1] === null ? "(none)" : p[1], "gold"));
      pair.appendChild(a); pair.appendChild(g); card.appendChild(pair);
      var t = el("table", null, "vals"), hr = el("tr"), vr = el("tr");
      data.columns.forEach(function (c, j) {
        if (x.values[j] === null) return;
        hr.appendChild(el("th", c)); vr.appendChild(el("td", fmt(x.values[j]), "num"));
      });
      t.appendChild(hr); t.appendChild(vr); card.appendChild(t);
      out.appendChild(card);
    });
    if (recs.length > limit) {
      var more = el("button", "show " + Math.min(PAGE, recs.length - limit) + " more");
      more.onclick = function () { limit += PAGE; render(); };
      out.appendChild(more);
    }
  }
  function reset() { limit = PAGE; render(); }
  runSel.onchange = function () { fillSteps(); reset(); };
  stepSel.onchange = reset; seedSel.onchange = reset; filter.oninput = reset;
  fillSteps(); render();
  document.body.setAttribute("data-rendered", "yes");
})();
"#;
