"""The study page: one self-contained HTML file (inline CSS, JS and data: PNG images).

The page knows pair ids, labels, prompts and images, nothing about which method drew which
image. Raters answer two questions per pair with the mouse or the keyboard; answers are kept
in the browser (localStorage, keyed by the study id) and exported as JSON or CSV files that
``craft study analyze`` reads (fields: craft.study.schema.CSV_COLUMNS).
"""

from __future__ import annotations

import html
import json

_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }
  header { background: #223; color: #eee; padding: 0.6em 1.2em; display: flex;
           flex-wrap: wrap; gap: 1em; align-items: center; }
  header h1 { font-size: 1.1em; margin: 0; flex: 1 1 auto; }
  header label { font-size: 0.9em; }
  main { max-width: 1100px; margin: 0 auto; padding: 1em; }
  #progress-bar { height: 6px; background: #ddd; border-radius: 3px; margin: 0.4em 0 1em; }
  #progress-fill { height: 6px; background: #48a; border-radius: 3px; width: 0; }
  #finding { background: #fff; border-left: 4px solid #48a; padding: 0.6em 1em; }
  #finding .label { font-size: 1.3em; font-weight: 600; }
  #finding .prompt { color: #555; margin-top: 0.2em; }
  .images { display: flex; justify-content: center; gap: 2em; margin: 1em 0; }
  figure { margin: 0; text-align: center; }
  figure img { width: __PX__px; height: __PX__px; image-rendering: pixelated;
               image-rendering: crisp-edges; background: #000; border: 1px solid #999; }
  figcaption { font-weight: 600; margin-top: 0.3em; }
  .question { background: #fff; padding: 0.6em 1em; margin: 0.6em 0; border: 2px solid #fff; }
  .question.active { border-color: #48a; }
  .question p { margin: 0 0 0.4em; font-weight: 600; }
  .choices { display: flex; gap: 0.6em; }
  .choices button { flex: 1; padding: 0.5em; font-size: 1em; cursor: pointer;
                    border: 1px solid #888; background: #f8f8f8; border-radius: 4px; }
  .choices button.chosen { background: #48a; color: #fff; border-color: #36a; }
  .choices button.chosen kbd { color: #222; }
  nav, .export { display: flex; gap: 0.6em; margin: 0.8em 0; align-items: center; }
  #message { min-height: 1.4em; color: #a40; }
  kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 0.3em; background: #fff;
        font-size: 0.9em; }
  .help { color: #555; font-size: 0.9em; line-height: 1.6; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <label>Rater ID <input id="rater" autocomplete="off" placeholder="your initials"></label>
  <span id="progress-text"></span>
</header>
<main>
  <div id="progress-bar"><div id="progress-fill"></div></div>
  <div id="finding">
    <div>Requested finding (pair <span id="pair-number"></span>)</div>
    <div class="label" id="finding-label"></div>
    <div class="prompt" id="finding-prompt"></div>
  </div>
  <div class="images">
    <figure><img id="img-left" alt="left image"><figcaption>Left</figcaption></figure>
    <figure><img id="img-right" alt="right image"><figcaption>Right</figcaption></figure>
  </div>
  <div class="question" id="q-finding" data-question="finding">
    <p>1. Which image depicts the requested finding better?</p>
    <div class="choices">
      <button data-choice="left">Left <kbd>1</kbd></button>
      <button data-choice="neither">Neither / no difference <kbd>2</kbd></button>
      <button data-choice="right">Right <kbd>3</kbd></button>
    </div>
  </div>
  <div class="question" id="q-plausibility" data-question="plausibility">
    <p>2. Which image is more plausible as a real __DESCRIPTION__?</p>
    <div class="choices">
      <button data-choice="left">Left <kbd>1</kbd></button>
      <button data-choice="neither">Neither / no difference <kbd>2</kbd></button>
      <button data-choice="right">Right <kbd>3</kbd></button>
    </div>
  </div>
  <nav>
    <button id="prev">&larr; Previous pair</button>
    <button id="next">Next pair &rarr;</button>
    <button id="next-open">Next unanswered</button>
  </nav>
  <div class="export">
    <button id="export-json">Export answers (JSON)</button>
    <button id="export-csv">Export answers (CSV)</button>
    <button id="clear">Clear answers in this browser (next rater)</button>
  </div>
  <div id="message" role="status"></div>
  <div class="help">
    Keys: <kbd>1</kbd> or <kbd>&larr;</kbd> left, <kbd>2</kbd> or <kbd>&darr;</kbd> neither,
    <kbd>3</kbd> or <kbd>&rarr;</kbd> right (answers the highlighted question, then moves on);
    <kbd>F</kbd> / <kbd>P</kbd> select question 1 / 2;
    <kbd>Backspace</kbd> previous pair, <kbd>Enter</kbd> next pair, <kbd>U</kbd> next unanswered;
    <kbd>J</kbd> export JSON, <kbd>C</kbd> export CSV.
    Answers are kept in this browser until you export them; send the exported file back.
  </div>
</main>
<script type="application/json" id="study-data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("study-data").textContent);
const STORE_KEY = "preference-study-" + DATA.study_id;
const QUESTIONS = ["finding", "plausibility"];
const CHOICE_KEYS = {"1": "left", "ArrowLeft": "left", "2": "neither", "ArrowDown": "neither",
                     "3": "right", "ArrowRight": "right"};
let storageOk = true;
let state = {rater: "", answers: {}, current: 0};
let active = "finding";

function load() {
  try {
    const saved = JSON.parse(window.localStorage.getItem(STORE_KEY) || "null");
    if (saved && typeof saved === "object") { state = Object.assign(state, saved); }
  } catch (e) { storageOk = false; }
}
function save() {
  try { window.localStorage.setItem(STORE_KEY, JSON.stringify(state)); }
  catch (e) { storageOk = false; }
}
function message(text) { document.getElementById("message").textContent = text; }
function answerOf(pid) { return state.answers[pid] || {}; }
function complete(pid) {
  const a = answerOf(pid);
  return QUESTIONS.every(q => a[q]);
}
function nAnswered() { return DATA.pairs.filter(p => complete(p.id)).length; }

function render() {
  const i = Math.min(Math.max(state.current, 0), DATA.pairs.length - 1);
  state.current = i;
  const pair = DATA.pairs[i];
  document.getElementById("pair-number").textContent = (i + 1) + " of " + DATA.pairs.length;
  document.getElementById("finding-label").textContent = pair.label;
  document.getElementById("finding-prompt").textContent =
    pair.prompt ? "Prompt: " + pair.prompt : "";
  document.getElementById("img-left").src = pair.left;
  document.getElementById("img-right").src = pair.right;
  const a = answerOf(pair.id);
  for (const q of QUESTIONS) {
    const box = document.getElementById("q-" + q);
    box.classList.toggle("active", q === active);
    for (const b of box.querySelectorAll("button")) {
      b.classList.toggle("chosen", a[q] === b.dataset.choice);
    }
  }
  const done = nAnswered();
  document.getElementById("progress-text").textContent =
    done + " / " + DATA.pairs.length + " pairs answered";
  document.getElementById("progress-fill").style.width =
    (100 * done / DATA.pairs.length) + "%";
  document.body.dataset.current = pair.id;
  document.body.dataset.answered = String(done);
  if (!storageOk) { message("This browser does not keep answers here: export before closing."); }
}

function show(i) {
  state.current = i;
  const a = answerOf(DATA.pairs[Math.min(Math.max(i, 0), DATA.pairs.length - 1)].id);
  active = QUESTIONS.find(q => !a[q]) || "finding";
  save(); render();
}

function answer(question, choice) {
  const pid = DATA.pairs[state.current].id;
  const a = Object.assign({}, answerOf(pid));
  a[question] = choice;
  a.answered_at = new Date().toISOString();
  state.answers[pid] = a;
  save();
  if (question === "finding" && !a.plausibility) {
    active = "plausibility";
  } else if (complete(pid) && state.current < DATA.pairs.length - 1) {
    show(state.current + 1);
    return;
  } else if (complete(pid)) {
    message(nAnswered() === DATA.pairs.length
      ? "All pairs answered. Export your answers (JSON or CSV) and send the file back."
      : "Last pair answered; some earlier pairs are still open (U: next unanswered).");
  } else {
    active = QUESTIONS.find(q => !a[q]) || question;
  }
  render();
}

function nextOpen() {
  const n = DATA.pairs.length;
  for (let k = 1; k <= n; k++) {
    const i = (state.current + k) % n;
    if (!complete(DATA.pairs[i].id)) { show(i); return; }
  }
  message("Every pair is answered.");
}

function answerRows() {
  return DATA.pairs.filter(p => state.answers[p.id]).map(p => ({
    pair_id: p.id,
    finding: state.answers[p.id].finding || null,
    plausibility: state.answers[p.id].plausibility || null,
    answered_at: state.answers[p.id].answered_at || null,
  }));
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], {type: type}));
  const a = document.createElement("a");
  a.href = url; a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function csvField(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

function exportAnswers(kind) {
  const rater = state.rater.trim();
  if (!rater) {
    message("Type your rater ID first (top right), then export.");
    document.getElementById("rater").focus();
    return;
  }
  const rows = answerRows();
  const safe = rater.replace(/[^A-Za-z0-9_.-]+/g, "_");
  const base = "answers-" + safe + "-" + DATA.study_id;
  if (kind === "json") {
    const doc = {format: "study-answers/1", study_id: DATA.study_id, rater: rater,
                 exported_at: new Date().toISOString(), n_pairs: DATA.pairs.length,
                 answers: rows};
    download(base + ".json", "application/json", JSON.stringify(doc, null, 2));
  } else {
    const cols = ["study_id", "rater", "pair_id", "finding", "plausibility", "answered_at"];
    const lines = [cols.join(",")].concat(rows.map(r => [DATA.study_id, rater, r.pair_id,
      r.finding, r.plausibility, r.answered_at].map(csvField).join(",")));
    download(base + ".csv", "text/csv", lines.join("\r\n") + "\r\n");
  }
  message("Exported " + rows.length + " answered pairs as " + kind.toUpperCase() + ".");
}

function onKey(e) {
  if (e.target && (e.target.tagName === "INPUT" || e.target.tagName === "TEXTAREA")) {
    if (e.key === "Enter") { e.target.blur(); }
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey) { return; }
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (key in CHOICE_KEYS) { answer(active, CHOICE_KEYS[key]); }
  else if (key === "f") { active = "finding"; render(); }
  else if (key === "p") { active = "plausibility"; render(); }
  else if (key === "Backspace" || key === "PageUp") { show(state.current - 1); }
  else if (key === "Enter" || key === "PageDown") { show(state.current + 1); }
  else if (key === "u") { nextOpen(); }
  else if (key === "j") { exportAnswers("json"); }
  else if (key === "c") { exportAnswers("csv"); }
  else { return; }
  e.preventDefault();
}

function init() {
  load();
  const rater = document.getElementById("rater");
  rater.value = state.rater || "";
  rater.addEventListener("input", () => { state.rater = rater.value; save(); });
  for (const q of QUESTIONS) {
    for (const b of document.getElementById("q-" + q).querySelectorAll("button")) {
      b.addEventListener("click", () => { active = q; answer(q, b.dataset.choice); b.blur(); });
    }
  }
  document.getElementById("prev").addEventListener("click", () => show(state.current - 1));
  document.getElementById("next").addEventListener("click", () => show(state.current + 1));
  document.getElementById("next-open").addEventListener("click", nextOpen);
  document.getElementById("export-json").addEventListener("click", () => exportAnswers("json"));
  document.getElementById("export-csv").addEventListener("click", () => exportAnswers("csv"));
  document.getElementById("clear").addEventListener("click", () => {
    if (!window.confirm("Delete every answer and the rater ID kept in this browser?")) { return; }
    state = {rater: "", answers: {}, current: 0};
    rater.value = "";
    message("Answers cleared.");
    show(0);
  });
  document.addEventListener("keydown", onKey);
  show(state.current || 0);
  document.body.dataset.ready = "1";
}
init();
</script>
</body>
</html>
"""


def render_page(data: dict, title: str, description: str, display_px: int) -> str:
    """The page's HTML for ``data`` (study_id and pairs: id, label, prompt, left, right)."""
    # JSON inside <script>: "</" would end the element early, so escape it.
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return (
        _TEMPLATE.replace("__TITLE__", html.escape(title))
        .replace("__DESCRIPTION__", html.escape(description))
        .replace("__PX__", str(int(display_px)))
        .replace("__DATA__", payload)
    )
